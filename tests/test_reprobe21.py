"""Re-probe of review 21's model-lifecycle and output fixes: each test reproduces one defect the re-prober found on
real files (the shipped model cards, the real CHAOS series, real exports and inference) and failed before its fix."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from medseg.errors import ProcessingError
from medseg.infer.cases import Case
from medseg.infer.pipeline import output_names
from medseg.models.registry import CARD_NAME, resolve_model
from tests.test_model_review21 import edited_card
from tests.test_output_review21 import _derived_series, _infer

# 1. a card's label names, spacing, HU window, roi_size and organ are bounded; no output name leaves the case folder

ESCAPED = {0: "background", 1: "../../escaped"}
CARD_BOUNDS: dict[str, tuple[dict[str, Any], str]] = {
    "label_is_a_path": ({"labels": ESCAPED, "training.config.labels": ESCAPED, "organ": "../../escaped"},
                        "labels: label name '../../escaped'"),
    "label_upper_case": ({"labels": {0: "background", 1: "Liver"}, "training.config.labels": {0: "background",
                                                                                               1: "Liver"},
                          "organ": "Liver"}, "labels: label name 'Liver'"),
    "label_empty": ({"labels": {0: "background", 1: ""}, "training.config.labels": {0: "background", 1: ""}},
                    "labels: label name ''"),
    "label_duplicate": ({"labels": {0: "background", 1: "background"},
                         "training.config.labels": {0: "background", 1: "background"}},
                        "labels: label names must be unique"),
    "organ_not_a_label": ({"organ": "spleen"}, "organ: 'spleen' is not one of the labels"),
    "spacing_infinite": ({"spacing": [float("inf"), 3.0, 3.0]}, "spacing: every spacing must be > 0 mm and finite"),
    "window_infinite": ({"intensity": {"a_min": -200.0, "a_max": float("inf")}}, "intensity: a_min and a_max must"),
    "window_nan": ({"intensity": {"a_min": float("nan"), "a_max": 300.0}}, "intensity: a_min and a_max must"),
    "roi_huge": ({"roi_size": [4096, 4096, 4096]}, "roi_size: every roi_size must be >= 1 and <= 512"),
}


@pytest.mark.parametrize("fault", sorted(CARD_BOUNDS))
def test_an_unbounded_card_is_refused_naming_its_field(tmp_path: Path, fault: str) -> None:
    """r12: each of these cards loaded, then wrote outside --out, ended in exit 5 or a MemoryError, or named an organ
    the model does not output."""
    changes, field = CARD_BOUNDS[fault]
    folder = edited_card(tmp_path / "m", "liver", **changes)
    with pytest.raises(ProcessingError) as exc:
        resolve_model(folder)
    assert exc.value.path == folder / CARD_NAME and exc.value.exit_code == 4
    assert f"invalid model card: {field}" in exc.value.one_line(), exc.value.one_line()


def test_shipped_cards_keep_loading() -> None:
    for organ in ("liver", "abdomen", "abdomen-2.1", "abdomen-2.2"):
        resolve_model(Path(__file__).resolve().parents[1] / "medseg/models/zoo" / organ)


def test_an_output_name_that_is_not_a_plain_file_name_is_refused(tmp_path: Path) -> None:
    """Backstop behind the card rule: a card object that escaped validation still cannot name a path."""
    model = resolve_model(Path(__file__).resolve().parents[1] / "medseg/models/zoo/liver")
    for name in ("../../escaped", "..", "a/b"):
        card = model.card.model_copy(update={"labels": {0: "background", 1: name}, "organ": name})
        bad = type(model)(card, model.folder)
        case = Case("c", tmp_path, "nifti", load=lambda: None)  # type: ignore[arg-type,return-value]
        with pytest.raises(ProcessingError, match="not a plain file name"):
            output_names(bad, case, (name,))


# 2. --overwrite over a result whose summary.json is missing or damaged leaves no earlier output beside the new ones


@pytest.fixture(scope="module")
def two_organ_result(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real liver+spleen inference of 40 CHAOS slices: labels.nii.gz, seg.dcm, preview.png, summary.json."""
    root = tmp_path_factory.mktemp("two")
    src = _derived_series(shared, root / "dicom", slices=slice(20, 60))
    run = _infer([str(src), "--organ", "liver,spleen", "--out", str(root / "out")], root)
    assert run.code == 0, run.console
    return src, root / "out"


@pytest.mark.parametrize("summary", ["missing", "damaged"])
def test_overwrite_without_a_readable_summary_removes_medsegs_fixed_outputs(two_organ_result, tmp_path: Path,
                                                                            summary: str) -> None:
    """r2: labels.nii.gz and preview.png of the liver+spleen run stayed beside the liver-only run's liver.nii.gz."""
    src, earlier = two_organ_result
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    case = out / "dicom"
    assert {"labels.nii.gz", "preview.png", "seg.dcm"} <= {p.name for p in case.iterdir()}
    if summary == "missing":
        (case / "summary.json").unlink()
    else:
        (case / "summary.json").write_text((case / "summary.json").read_text()[:300])
    (case / "notes.txt").write_text("the reader's own")
    run = _infer([str(src), "--organ", "liver", "--out", str(out), "--overwrite", "--no-preview"], tmp_path)
    assert run.code == 0, run.console
    assert {p.name for p in case.iterdir()} == {"liver.nii.gz", "seg.dcm", "summary.json", "notes.txt"}


def test_an_organ_file_no_summary_accounts_for_is_refused_not_deleted(two_organ_result, tmp_path: Path) -> None:
    """Without a readable summary.json, spleen.nii.gz may be an earlier result or the reader's: neither kept beside
    the new result nor deleted, but named in a usage error (exit 2) before any work."""
    src, earlier = two_organ_result
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    case = out / "dicom"
    (case / "summary.json").unlink()
    (case / "spleen.nii.gz").write_bytes(b"whose?")
    run = _infer([str(src), "--organ", "liver", "--out", str(out), "--overwrite"], tmp_path)
    lines = [line for line in run.console.splitlines() if line.startswith("error: ")]
    assert run.code == 2 and len(lines) == 1 and "spleen.nii.gz" in lines[0], run.console
    assert "segmenting" not in run.console and (case / "spleen.nii.gz").read_bytes() == b"whose?"
    assert (case / "labels.nii.gz").exists() and not (case / "liver.nii.gz").exists()
