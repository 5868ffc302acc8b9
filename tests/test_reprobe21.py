"""Re-probe of review 21's model-lifecycle and output fixes: each test reproduces one defect the re-prober found on
real files (the shipped model cards, the real CHAOS series, real exports and inference) and failed before its fix."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medseg.errors import ProcessingError
from medseg.infer.cases import Case
from medseg.infer.pipeline import output_names
from medseg.models.registry import CARD_NAME, resolve_model
from tests.test_model_review21 import edited_card, tiny_model
from tests.test_output_review21 import ALGO, _derived_series, _infer, dciodvfy_errors

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


# 3. a cache folder medseg creates is owner-only whoever creates it; the auto fallback names the folder and the fix
# 4. the export folder and its files are checked too, and each folder must be the user's own


@pytest.fixture()
def umask_002() -> Iterator[None]:
    """The group-shared umask 002 (a common site default) for one test, then the one before."""
    before = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_seg_table_cache_made_under_umask_002_leaves_the_export_cache_usable(tmp_path: Path, umask_002: None) -> None:
    """r1 (a): the SEG writer's highdicom/ table made the cache root 0775; every later openvino run failed exit 4."""
    import highdicom._standard_utils as standard

    from medseg.infer.runtime import accelerated_runner
    from medseg.writers.seg_tables import preloaded_modules

    cache = tmp_path / "cache"
    load_all = getattr(standard.get_module_attribute_map, "__wrapped__", standard.get_module_attribute_map)
    assert preloaded_modules(load_all, cache)
    assert (_mode(cache), _mode(cache / "highdicom")) == (0o700, 0o700)
    runner = accelerated_runner(tiny_model(tmp_path / "m"), "openvino", 1, cache)
    folder = Path(runner.info["cache"])
    assert all(_mode(p) & 0o022 == 0 for p in (folder, *folder.iterdir()))
    assert accelerated_runner(tiny_model(tmp_path / "m"), "openvino", 1, cache).info["exported_now"] is False


def test_train_cache_made_under_umask_002_is_owner_only(tmp_path: Path, umask_002: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """r1 (a2): `medseg train` made the cache root (and anatomy/) 0775 through prepare's mkdir(parents=True)."""
    from medseg.train.synth.prepare import default_cache_dir

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" and _mode(tmp_path / "cache") == 0o700


def test_auto_fallback_names_the_cache_folder_and_the_fix(tmp_path: Path) -> None:
    """r1: `auto` fell back to torch saying only "writable by other users", naming neither folder nor chmod."""
    from medseg.infer.runtime import load_runner

    (tmp_path / "cache").mkdir(mode=0o700)
    (tmp_path / "cache").chmod(0o775)
    runner = load_runner(tiny_model(tmp_path / "m"), "auto", cache=tmp_path / "cache")
    fallback = runner.info["fallback"]
    assert runner.backend == "torch" and str(tmp_path / "cache") in fallback and "chmod" in fallback, fallback


@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_group_writable_export_folder_or_file_is_refused(tmp_path: Path, what: str) -> None:
    """r1 (b): an export folder 0775 or files 0664 of an earlier medseg were loaded once the root was fixed."""
    from medseg.infer.runtime import accelerated_runner

    model = tiny_model(tmp_path / "m")
    folder = Path(accelerated_runner(model, "openvino", 1, tmp_path / "cache").info["cache"])
    target = folder if what == "folder" else folder / "model.bin"
    target.chmod(0o775 if what == "folder" else 0o664)
    with pytest.raises(ProcessingError, match="writable by other users") as exc:
        accelerated_runner(model, "openvino", 1, tmp_path / "cache")
    assert exc.value.path == target and exc.value.exit_code == 4 and "chmod" in exc.value.one_line()


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user owns needs root")
@pytest.mark.parametrize("level", ["root", "openvino", "export"])
def test_a_cache_folder_another_user_owns_is_refused(tmp_path: Path, level: str) -> None:
    """r1 (c): a cache root owned by another user (0755) was accepted."""
    from medseg.infer.runtime import accelerated_runner

    model = tiny_model(tmp_path / "m")
    cache = tmp_path / "cache"
    folder = Path(accelerated_runner(model, "openvino", 1, cache).info["cache"])
    target = {"root": cache, "openvino": cache / "openvino", "export": folder}[level]
    os.chown(target, 65534, -1)
    with pytest.raises(ProcessingError, match="owned by another user") as exc:
        accelerated_runner(model, "openvino", 1, cache)
    assert exc.value.path == target and exc.value.exit_code == 4


# 5. SEG values copied from a valid source stay valid: no caret past 64 characters, no inf or nan


def test_a_64_character_name_and_non_finite_sizes_give_a_valid_seg(shared: Path, tmp_path: Path) -> None:
    """r5: a 64-character single-group PatientName/ReferringPhysicianName got a caret (65 characters); PatientSize
    1e999 was written 'inf' and PatientWeight NaN 'nan', without a note."""
    import numpy as np
    import pydicom

    from medseg.io import read_image, read_nifti
    from medseg.writers.seg import write_seg

    folder = _derived_series(shared, tmp_path / "src",
                             {(0x0010, 0x1030): (b"72.5", b"NaN "), (0x0010, 0x1020): (b"1.83", b"1e999 ")},
                             PatientName="A" * 64, ReferringPhysicianName="B" * 64, PatientWeight="72.5",
                             PatientSize="1.83")  # fmt: skip
    liver = (read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz").array > 0).astype(np.uint8)
    notes: list[str] = []
    with pytest.warns(UserWarning, match="single component"):  # highdicom's advice; no caret fits in 64
        path = write_seg(liver, read_image(folder), {1: "liver"}, ALGO, tmp_path / "seg.dcm", notes=notes)
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    assert (str(seg.PatientName), str(seg.ReferringPhysicianName)) == ("A" * 64, "B" * 64)
    assert "PatientWeight" not in seg and "PatientSize" not in seg
    for keyword in ("PatientWeight", "PatientSize"):
        assert any(keyword in n and "not a number" in n for n in notes), (keyword, notes)
    assert not any("Name" in n for n in notes), notes
    errors = dciodvfy_errors(path)
    assert set(errors) <= {"Error - Dicom dataset contains invalid data values for Value Representations"}, errors


# 6. `medseg batch` says on the console, once, that --backend auto fell back to eager torch, and why


def test_batch_says_once_that_auto_fell_back_to_torch_naming_the_cache(shared: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """r9: with a group-writable export cache, `medseg batch --backend auto` ran torch for every study and said
    nothing on the console (only summary.json recorded the fallback)."""
    from infer_fixtures import make_model_folder
    from pacs_helpers import chaos_files, make_study

    from medseg.cli.main import main

    model = make_model_folder(tmp_path / "m", seed=1, roi=(64, 64, 64), foreground_bias=1000.0)
    for name in ("a", "b"):
        make_study(chaos_files(shared), tmp_path / "in" / name, range(28, 52), f"fallback-{name}")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o775)
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(cache))
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", str(model),
              "--backend", "auto"])  # fmt: skip
    out, err = capsys.readouterr()
    assert int(exc.value.code or 0) == 0 and out.startswith("2 sent"), err
    said = [line for line in err.splitlines() if "OpenVINO not used" in line]
    assert len(said) == 1 and said[0].startswith("warning: ") and str(cache) in said[0] and "chmod" in said[0], err


def test_pacs_serve_says_at_start_that_auto_fell_back_to_torch(tmp_path: Path) -> None:
    """r9: `medseg pacs serve` with backend auto and a group-writable cache served every study with torch, silently."""
    from infer_fixtures import make_model_folder
    from pacs_helpers import Served, write_config

    model = make_model_folder(tmp_path / "m", seed=1, roi=(64, 64, 64))
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o775)
    write_config(tmp_path / "pacs.yaml", tmp_path / "store", {"folder": str(tmp_path / "segs")}, port=0,
                 model=str(model), backend="auto")  # fmt: skip
    served = Served(tmp_path / "pacs.yaml", 0, tmp_path / "serve.log", env={"MEDSEG_CACHE_DIR": str(cache)}).start()
    served.stop()
    said = [line for line in (tmp_path / "serve.log").read_text().splitlines() if "OpenVINO not used" in line]
    assert len(said) == 1 and said[0].startswith("warning: ") and str(cache) in said[0] and "chmod" in said[0], said


# 7. a dangling symbolic link as --out is named as one


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_dangling_symlink_out_is_named_a_link_to_nothing(shared: Path, tmp_path: Path, below: str) -> None:
    """r3: `--out dangling` (and `dangling/sub`) said "--out is a file, not a folder"."""
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    out = tmp_path / "dangling" / below if below else tmp_path / "dangling"
    run = _infer([str(shared / "ct/chaos_ct_sample/dicom"), "--organ", "liver", "--out", str(out)], tmp_path)
    lines = [line for line in run.console.splitlines() if line.startswith("error: ")]
    assert run.code == 2 and len(lines) == 1 and "is a symbolic link to nothing" in lines[0], run.console
    assert "segmenting" not in run.console and not (tmp_path / "nowhere").exists()
