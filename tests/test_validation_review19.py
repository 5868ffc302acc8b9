"""Defects of the nineteenth review of `medseg validate` / `report sign|verify`, each on small real inputs: where
criteria and set files came from, training data the independence check could not compare, label grids, atomic
signing and output folders, MLflow failures, traceability of skipped tests, the source digest's scope, the signature
envelope, the bootstrap level and the risk record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.validation.acceptance import ACCEPTANCE_DIR
from medseg.validation.records import release_supported
from medseg.validation.sets import SETS_DIR, file_origin


def _record(criteria: dict[str, Any], set_file: dict[str, Any]) -> dict[str, Any]:
    """The parts of a report.json that release_supported reads, with every other reason absent."""
    return {
        "acceptance_file": criteria,
        "set": {"name": "liver_real_manual_v2", "file": set_file},
        "acceptance": {"verdict": "pass", "criteria": []},
        "traceability": {"complete": True, "gaps": [], "junit": {"failed": 0}},
        "risk": {"residual_not_acceptable": []},
    }


def test_criteria_typed_as_the_projects_path_in_another_folder_are_not_the_projects(tmp_path, monkeypatch) -> None:
    """A lax liver_v1.yaml in ./validation/acceptance/ of the current folder was recorded as
    'validation/acceptance/liver_v1.yaml' and counted as the project's pre-specified criteria."""
    (tmp_path / "validation" / "acceptance").mkdir(parents=True)
    lax = tmp_path / "validation" / "acceptance" / "liver_v1.yaml"
    lax.write_text((ACCEPTANCE_DIR / "liver_v1.yaml").read_text().replace("0.90", "0.10"))
    monkeypatch.chdir(tmp_path)
    typed = Path("validation/acceptance/liver_v1.yaml")
    origin = file_origin(typed, ACCEPTANCE_DIR)
    assert origin == {"path": str(lax.resolve()), "in_project": False}
    shipped_set = file_origin(SETS_DIR / "liver_real_manual_v2.yaml", SETS_DIR)
    assert shipped_set == {"path": "validation/sets/liver_real_manual_v2.yaml", "in_project": True}
    supported, reasons = release_supported(_record(origin, shipped_set))
    assert not supported and any("not the project's pre-specified criteria" in r for r in reasons), reasons
    real = file_origin(ACCEPTANCE_DIR / ".." / "acceptance" / "liver_v1.yaml", ACCEPTANCE_DIR)
    assert real == {"path": "validation/acceptance/liver_v1.yaml", "in_project": True}
    assert release_supported(_record(real, shipped_set)) == (True, [])


def test_a_set_file_outside_validation_sets_with_a_shipped_sets_name_does_not_support_release(tmp_path) -> None:
    """A set file elsewhere named liver_real_manual_v2 (another scan) gave a record that read as the shipped set's."""
    impostor = tmp_path / "liver_real_manual_v2.yaml"
    impostor.write_text((SETS_DIR / "liver_real_manual_v2.yaml").read_text())
    origin = file_origin(impostor, SETS_DIR)
    assert origin == {"path": str(impostor.resolve()), "in_project": False}
    criteria = file_origin(ACCEPTANCE_DIR / "liver_v1.yaml", ACCEPTANCE_DIR)
    supported, reasons = release_supported(_record(criteria, origin))
    assert not supported and reasons == [
        f"test set liver_real_manual_v2 was read from {impostor.resolve()}, not from the project's locked sets "
        "(validation/sets/)"
    ]
    old_record = _record(criteria, origin)
    del old_record["set"]["file"]
    assert not release_supported(old_record)[0]
