"""summary.json: the per-series record of what was found, with what, how it was checked, and how long it took."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_write_text
from medseg.io.summary_schema import SCHEMA, CaseSummary
from medseg.postprocess.measure import organ_stats

__all__ = ["SCHEMA", "organ_stats", "write_summary"]  # organ_stats lives in postprocess.measure; old name kept



def write_summary(summary: dict[str, Any] | CaseSummary, path: Path, overwrite: bool = False) -> Path:
    """Validate the summary against `CaseSummary` (a missing or mistyped field fails here, not in a reader) and
    write it as indented JSON, atomically, with its schema tag first."""
    record = summary if isinstance(summary, CaseSummary) else CaseSummary.model_validate({"schema": SCHEMA, **summary})
    atomic_write_text(path, json.dumps(record.to_json(), indent=2, default=str) + "\n", overwrite)
    return path
