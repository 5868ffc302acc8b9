"""`with audited(command, params) as rec:` for every CLI command that touches patient data, models or reports
(defined in `medseg.audit.command`, which library entry points use too).

See `medseg.audit.session` for what is recorded and when; the store folder comes from MEDSEG_AUDIT_DIR.
"""

from __future__ import annotations

from medseg.audit.command import audited
from medseg.audit.session import AuditRecorder, series_param

__all__ = ["AuditRecorder", "audited", "series_param"]
