"""report.json (sorted keys, no NaN) with the SHA-256 of every artifact, and per_case.csv, in a validation folder."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from medseg.audit.digest import file_sha256
from medseg.io.atomic import atomic_write_text

REPORT = "report.json"
HTML = "report.html"
SIGNATURE = "signature.dsse.json"
PDF = "report.pdf"
NOT_ARTIFACTS = {REPORT, HTML, SIGNATURE, PDF}
CSV_COLUMNS = (
    "case_id",
    "patient",
    "status",
    "dice",
    "iou",
    "hd95_mm",
    "assd_mm",
    "nsd",
    "volume_ref_ml",
    "volume_pred_ml",
    "volume_diff_ml",
    "volume_diff_pct",
    "sensitivity",
    "precision",
    "fn_rate",
    "outcome",
)


def dumps(report: dict[str, Any]) -> str:
    """The one text form of a report: sorted keys, one-space indent, UTF-8; NaN/inf refused."""
    return json.dumps(report, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def files_in(folder: Path) -> dict[str, str]:
    """Relative POSIX path -> SHA-256 of every file under the folder."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def artifacts(folder: Path) -> dict[str, str]:
    """The artifacts report.json binds: every file except the report, its HTML rendering and the signature."""
    return {k: v for k, v in files_in(folder).items() if k not in NOT_ARTIFACTS}


def per_case_csv(report: dict[str, Any]) -> str:
    """One row per case with every metric of the model's organ."""
    organ = report["model"]["organ"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for c in report["cases"]:
        w.writerow({"case_id": c["case_id"], "patient": c["patient"], "status": c["inference"]["status"]}
                   | c["metrics"][organ])  # fmt: skip
    return buf.getvalue()


def write_report(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write per_case.csv, then report.json holding the digest of every artifact; returns the final report."""
    atomic_write_text(folder / "per_case.csv", per_case_csv(report), overwrite=True)
    final = report | {"artifacts": artifacts(folder)}
    atomic_write_text(folder / REPORT, dumps(final), overwrite=True)
    return final


def read_report(folder: Path) -> dict[str, Any]:
    """Parse report.json of a validation folder."""
    return json.loads((folder / REPORT).read_text())
