"""Write a monitoring report: monitor.json (every number) and monitor.html (the dashboard), atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medseg.io.atomic import atomic_write_text
from medseg.monitor.facts import CaseFacts
from medseg.monitor.report import Report, analyse
from medseg.monitor.series import time_series

JSON_NAME, HTML_NAME = "monitor.json", "monitor.html"


@dataclass(frozen=True)
class Written:
    """The report and the files written for it."""

    report: Report
    json_path: Path
    html_path: Path


def write_report(
    reference: list[CaseFacts],
    monitored: list[CaseFacts],
    description: str,
    out_dir: Path,
    volume_ranges: dict[str, tuple[float, float]] | None = None,
    links: dict[str, str] | None = None,
    overwrite: bool = True,
) -> Written:
    """Analyse, then write monitor.json and monitor.html into `out_dir` (created when missing)."""
    from medseg.monitor.dashboard import render

    ranges = volume_ranges or {}
    report = analyse(reference, monitored, description, ranges)
    codes = [c.code for c in report.cusums]
    features = [d.feature for d in report.categorical]
    series = time_series(reference, monitored, codes, features)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = report.to_json() | {"series": series, "volume_ranges": {k: list(v) for k, v in ranges.items()}}
    json_path, html_path = out_dir / JSON_NAME, out_dir / HTML_NAME
    atomic_write_text(json_path, json.dumps(data, indent=1) + "\n", overwrite)
    atomic_write_text(html_path, render(report, reference, monitored, series, ranges, links or {}), overwrite)
    return Written(report, json_path, html_path)
