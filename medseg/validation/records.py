"""Quality records attached to a validation: traceability matrix (from JUnit XML), risk records and the SOUP list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_write_text
from medseg.validation.soup import cyclonedx, soup_diff, soup_list
from medseg.validation.traceability import RISK_DIR, build_matrix, risk_list

RELEASED_SOUP = RISK_DIR / "soup-released.json"
RELEASED_CRITERIA = "validation/acceptance/"
RELEASED_SETS = "validation/sets/"


def attach_records(report: dict[str, Any], out: Path, junit: Path | None, risk_dir: Path = RISK_DIR) -> dict[str, Any]:
    """Write soup.json and risk.json (and traceability.json with --junit) into OUT; return the report with them."""
    soup = soup_list()
    previous = json.loads(RELEASED_SOUP.read_text()) if RELEASED_SOUP.is_file() else []
    atomic_write_text(out / "soup.json", json.dumps(soup, indent=1) + "\n", overwrite=True)
    atomic_write_text(out / "sbom.cdx.json", json.dumps(cyclonedx(soup), indent=1) + "\n", overwrite=True)
    hazards = risk_list(risk_dir / "hazards.yaml", "hazards")
    atomic_write_text(out / "risk.json", json.dumps(hazards, indent=1, sort_keys=True) + "\n", overwrite=True)
    open_risks = [h["id"] for h in hazards if not h["residual_acceptable"]]
    extra: dict[str, Any] = {
        "soup": {"packages": len(soup), "diff_vs_released": soup_diff(previous, soup),
                 "released_list": RELEASED_SOUP.name if previous else None},
        "risk": {"hazards": len(hazards), "residual_not_acceptable": open_risks},
        "traceability": None,
    }  # fmt: skip
    if junit is not None:
        verdicts = {c["id"]: c["verdict"] for c in report["acceptance"]["criteria"]}
        matrix = build_matrix(junit, verdicts, risk_dir)
        atomic_write_text(out / "traceability.json", json.dumps(matrix, indent=1) + "\n", overwrite=True)
        extra["traceability"] = matrix
    return report | extra


def release_supported(report: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether the record supports release: the set is one of the project's locked sets (validation/sets/), the
    criteria of the project's released set (validation/acceptance/) all passed, the traceability matrix of this
    code's test run is complete, no test of that run failed, and no hazard's residual risk is marked not
    acceptable. A criteria or set file counts as the project's only by where it resolved to (`file_origin`)."""
    reasons = []
    criteria = report["acceptance_file"]
    if criteria.get("in_project") is not True or not str(criteria["path"]).startswith(RELEASED_CRITERIA):
        reasons.append(
            f"criteria {criteria['path']} are not the project's pre-specified criteria ({RELEASED_CRITERIA})"
        )
    set_file = report["set"].get("file") or {}
    if set_file.get("in_project") is not True or not str(set_file.get("path")).startswith(RELEASED_SETS):
        reasons.append(
            f"test set {report['set']['name']} was read from {set_file.get('path', 'an unrecorded file')}, "
            f"not from the project's locked sets ({RELEASED_SETS})"
        )
    uncompared = report.get("independence", {}).get("uncompared_training_cts", 0)
    if uncompared:
        reasons.append(f"independence unproven: {uncompared} training CT(s) were not under the data root and were "
                       "not compared (--allow-unverified-independence)")  # fmt: skip
    if report["acceptance"]["verdict"] != "pass":
        failed = [c["id"] for c in report["acceptance"]["criteria"] if c["verdict"] != "pass"]
        reasons.append(f"acceptance {report['acceptance']['verdict']} ({', '.join(failed)})")
    trace = report.get("traceability")
    if trace is None:
        reasons.append("no traceability matrix (pass --junit with this release's test results)")
    else:
        if not trace["complete"]:
            reasons.append(f"traceability incomplete: {len(trace['gaps'])} gap(s), first: {trace['gaps'][0]}")
        if trace["junit"]["failed"]:
            reasons.append(f"{trace['junit']['failed']} test(s) of the run failed or raised an error")
    open_risks = report.get("risk", {}).get("residual_not_acceptable", [])
    if open_risks:
        reasons.append(f"residual risk not acceptable for {', '.join(open_risks)} (docs/risk/hazards.yaml)")
    return not reasons, reasons
