"""Write a monitoring report: monitor.json (every number) and monitor.html (the dashboard), atomically."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import ProcessingError
from medseg.io.atomic import atomic_path
from medseg.monitor.facts import CaseFacts
from medseg.monitor.report import Report, analyse, finite_cases
from medseg.monitor.series import time_series

JSON_NAME, HTML_NAME = "monitor.json", "monitor.html"


@dataclass(frozen=True)
class Written:
    """The report and the files written for it."""

    report: Report
    json_path: Path
    html_path: Path


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so monitor.json is valid JSON (no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _make_folder(out_dir: Path) -> None:
    """Create the report folder; a folder that cannot be made is a one-line ProcessingError naming it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProcessingError(
            f"cannot write the report: {exc.strerror or exc}",
            path=out_dir,
            hint="Pass --out in a folder you can write to.",
        ) from exc


def write_report(
    reference: list[CaseFacts],
    monitored: list[CaseFacts],
    description: str,
    out_dir: Path,
    volume_ranges: dict[str, tuple[float, float]] | None = None,
    links: dict[str, str] | None = None,
    overwrite: bool = True,
) -> Written:
    """Analyse, render both outputs in memory, then write monitor.json and monitor.html into `out_dir` together.

    Nothing is written until both are rendered; monitor.html is put in place first and monitor.json only after it,
    so a failure leaves the previous report (or none), never a monitor.json without its dashboard.
    """
    from medseg.monitor.dashboard import render

    ranges = volume_ranges or {}
    report = analyse(reference, monitored, description, ranges)
    reference, _ = finite_cases(reference)
    monitored, _ = finite_cases(monitored)
    codes = [c.code for c in report.cusums]
    features = [d.feature for d in report.categorical]
    series = time_series(reference, monitored, codes, features)
    data = report.to_json() | {"series": series, "volume_ranges": {k: list(v) for k, v in ranges.items()}}
    json_text = json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n"
    html_text = render(report, reference, monitored, series, ranges, links or {})
    out_dir = Path(out_dir)
    _make_folder(out_dir)
    json_path, html_path = out_dir / JSON_NAME, out_dir / HTML_NAME
    with atomic_path(json_path, overwrite) as json_tmp, atomic_path(html_path, overwrite) as html_tmp:
        json_tmp.write_text(json_text, encoding="utf-8")
        html_tmp.write_text(html_text, encoding="utf-8")
    return Written(report, json_path, html_path)
