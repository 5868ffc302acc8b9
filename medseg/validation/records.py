"""Quality records attached to a validation: traceability matrix (from JUnit XML), risk records and the SOUP list."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_write_text
from medseg.validation.soup import cyclonedx, soup_diff, soup_list
from medseg.validation.traceability import RISK_DIR, build_matrix, risk_list

RELEASED_SOUP = RISK_DIR / "soup-released.json"
RELEASED_CRITERIA = "validation/acceptance/"
RELEASED_SETS = "validation/sets/"
CLAIM = re.compile(r"\b(AC-\d+)\s+(?:is\s+|was\s+)?(fails|failed|passes|passed|not evaluable|inconclusive)\b", re.I)
CLAIMED = {"fails": "fail", "failed": "fail", "passes": "pass", "passed": "pass", "not evaluable": "not_evaluable",
           "inconclusive": "not_evaluable"}  # fmt: skip


def attach_records(report: dict[str, Any], out: Path, junit: Path | None, risk_dir: Path = RISK_DIR) -> dict[str, Any]:
    """Write soup.json and risk.json (and traceability.json with --junit) into OUT; return the report with them."""
    soup = soup_list()
    previous = json.loads(RELEASED_SOUP.read_text()) if RELEASED_SOUP.is_file() else []
    atomic_write_text(out / "soup.json", json.dumps(soup, indent=1) + "\n", overwrite=True)
    atomic_write_text(out / "sbom.cdx.json", json.dumps(cyclonedx(soup), indent=1) + "\n", overwrite=True)
    hazards = risk_list(risk_dir / "hazards.yaml", "hazards")
    verdicts = {c["id"]: c["verdict"] for c in report["acceptance"]["criteria"]}
    matrix = None
    if junit is not None:
        matrix = build_matrix(junit, verdicts, risk_dir)
        atomic_write_text(out / "traceability.json", json.dumps(matrix, indent=1) + "\n", overwrite=True)
    requirements = risk_list(risk_dir / "requirements.yaml", "requirements")
    risk = [hazard_in_run(h, requirements, verdicts, matrix) for h in hazards]
    atomic_write_text(out / "risk.json", json.dumps(risk, indent=1, sort_keys=True) + "\n", overwrite=True)
    open_risks = [h["id"] for h in hazards if not h["residual_acceptable"]]
    contradicted = [h["id"] for h in risk if not h["run"]["narrative_matches_run"]]
    extra: dict[str, Any] = {
        "soup": {"packages": len(soup), "diff_vs_released": soup_diff(previous, soup),
                 "released_list": RELEASED_SOUP.name if previous else None},
        "risk": {"hazards": len(hazards), "residual_not_acceptable": open_risks,
                 "narrative_contradicted_by_run": contradicted},
        "traceability": matrix,
    }  # fmt: skip
    return report | extra


def stated_results(text: str) -> dict[str, str]:
    """Criterion results a hazard's narrative states ('AC-06 fails', 'AC-02 is not evaluable'), as verdicts."""
    return {cid: CLAIMED[word.lower()] for cid, word in CLAIM.findall(text)}


def hazard_in_run(
    hazard: dict[str, Any], requirements: list[dict[str, Any]], verdicts: dict[str, str], matrix: dict[str, Any] | None
) -> dict[str, Any]:
    """One hazard of hazards.yaml with what this run found: whether its controls and verification passed in the
    --junit run (None without one) and the problems named, the verdicts of the criteria it cites (in its text or
    through its control requirements), and whether its narrative's stated results agree with them; a changed
    result changes the record, and a narrative the run contradicts is marked `narrative_matches_run: false`."""
    text = " ".join(str(v) for v in hazard.values() if isinstance(v, str))
    controls = set(hazard.get("controls", []))
    cited = set(re.findall(r"\bAC-\d+\b", text))
    cited |= {c for r in requirements if r.get("id") in controls for c in r.get("criteria", [])}
    criteria = {c: verdicts.get(c, "not evaluated") for c in sorted(cited)}
    stated = stated_results(text)
    contradicted = sorted(c for c, v in stated.items() if criteria.get(c) != v)
    row = next((r for r in (matrix or {}).get("hazards", []) if r["id"] == hazard["id"]), None)
    problems = [g.split(": ", 1)[1] for g in (matrix or {}).get("gaps", []) if g.startswith(f"{hazard['id']}: ")]
    run = {
        "verified": None if row is None else row["verified"],
        "verification_problems": problems,
        "criteria": criteria,
        "narrative_states": stated,
        "narrative_contradicted": contradicted,
        "narrative_matches_run": not contradicted,
    }
    return hazard | {"run": run}


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
        reasons.append(f"independence unproven: {uncompared} training CT(s) were missing from the data root or "
                       "differed from their manifest's SHA-256 and were not compared "
                       "(--allow-unverified-independence)")  # fmt: skip
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
