"""`with audited(command, params) as rec:` for every command that touches patient data, models or reports: the CLI's
commands and the release-engineering entry points (`python -m medseg.train.export`, `medseg.train.quantize`), which
may not import `medseg.cli`.

See `medseg.audit.session` for what is recorded and when; the store folder comes from MEDSEG_AUDIT_DIR.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.audit.config import load_config
from medseg.audit.session import AuditRecorder, audit_session


@contextlib.contextmanager
def audited(
    command: str, params: Mapping[str, Any] | None = None, *, audit_dir: Path | None = None
) -> Iterator[AuditRecorder]:
    """Record a start event now (AuditError if the trail cannot be written) and an end event when the block exits."""
    software = {"medseg": __version__, "python": platform.python_version()}
    with audit_session(command, params, software=software, config=load_config(audit_dir)) as rec:
        yield rec
