"""Review 20 of what `medseg infer` tells the clinician: each test builds its case from the shared real CTs."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.infer.qc import check_input, check_result, edge_evidence
from medseg.io import Volume, read_image, read_nifti
from medseg.postprocess import organ_stats
from tests.test_infer_qc import CARD

REAL = ("chaos_ct_sample", "radcttace_0697", "radcttace_1211", "totalseg_example_ct_sm")


def _codes(flags) -> set[str]:
    return {f.code for f in flags}


def _outside_circle(volume: Volume, radius_mm: float) -> np.ndarray:
    """In-plane mask of the voxels outside a centred circle (the reconstruction field of view)."""
    nx, ny = volume.shape[:2]
    x, y = np.meshgrid((np.arange(nx) - nx / 2) * volume.spacing[0], (np.arange(ny) - ny / 2) * volume.spacing[1],
                       indexing="ij")  # fmt: skip
    return x**2 + y**2 > radius_mm**2


def _padded(volume: Volume, radius_mm: float, value: float = -3024) -> Volume:
    array = volume.array.copy()
    array[_outside_circle(volume, radius_mm)] = value
    return volume.with_array(array)


def _result_codes(volume: Volume, truth: np.ndarray) -> set[str]:
    stats = organ_stats(truth, 1, volume)
    near = edge_evidence(volume, truth, 1, stats["bbox_index"])
    return _codes(check_result("liver", stats, volume.shape, CARD, volume.geometry.direction_matrix, near))


@pytest.fixture(scope="module")
def chaos_nifti(shared):
    image = read_nifti(shared / "ct/chaos_ct_sample/image.nii.gz")
    truth = (read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz").array > 0).astype(np.uint8)
    return image, truth


def test_liver_cut_by_the_fov_circle_is_flagged_truncated(chaos_nifti):
    """Item 1: padding (-3024) outside a 115 mm circle cuts 30 % of the liver off; the liver never reaches the
    array's edge, yet the result is flagged organ_truncated; at 95 mm the field of view holding data is too small."""
    image, truth = chaos_nifti
    inside = truth * ~_outside_circle(image, 115)[..., None]
    assert "organ_truncated" in _result_codes(_padded(image, 115), inside.astype(np.uint8))
    assert "fov_small" not in _codes(check_input(_padded(image, 115), CARD))
    assert "fov_small" in _codes(check_input(_padded(image, 95), CARD))


@pytest.mark.parametrize("case", REAL)
def test_real_cases_and_corner_padding_raise_no_new_flag(shared, case):
    """Item 1: the four unmodified real cases, and copies padded (-2048) outside the circle inscribed in the array
    as many scanners store them, raise neither organ_truncated beyond the array edge nor fov_small."""
    image = read_nifti(shared / f"ct/{case}/image.nii.gz")
    truth = (read_nifti(shared / f"ct/{case}/liver.nii.gz").array > 0).astype(np.uint8)
    stats = organ_stats(truth, 1, image)
    at_edge = _codes(check_result("liver", stats, image.shape, CARD, image.geometry.direction_matrix))
    half = min(image.shape[0] * image.spacing[0], image.shape[1] * image.spacing[1]) / 2
    for volume in (image, _padded(image, half, -2048)):
        assert _result_codes(volume, truth) == at_edge
        assert "fov_small" not in _codes(check_input(volume, CARD))


def test_chaos_dicom_no_padding_flag(shared):
    volume = read_image(shared / "ct/chaos_ct_sample/dicom")
    truth = (read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz").array > 0).astype(np.uint8)
    stats = organ_stats(truth, 1, volume)
    assert not edge_evidence(volume, truth, 1, stats["bbox_index"]).padding
    assert check_input(volume, CARD) == []


def test_batch_case_names_never_collide_with_another_input(shared, tmp_path):
    """Item 2: x.nii, x.nii.gz and x-2.nii.gz: the second "x" must not take the third file's own name x-2."""
    import shutil

    import nibabel as nib

    from medseg.infer.cases import discover_cases

    src = shared / "ct/totalseg_example_ct_sm/image.nii.gz"
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(src, root / "x.nii.gz")
    shutil.copy(src, root / "x-2.nii.gz")
    nib.save(nib.load(src), root / "x.nii")
    cases, _ = discover_cases(root)
    names = [c.name for c in cases]
    assert len(set(names)) == 3 and {c.source.name for c in cases if c.name == "x-2"} == {"x-2.nii.gz"}


def test_two_cases_for_one_folder_are_refused_before_any_work(shared, tmp_path):
    """Item 2: the CLI's pre-check refuses two cases writing into one folder (exit 2), whatever named them."""
    from dataclasses import replace

    from medseg.errors import UsageError
    from medseg.infer.cases import discover_cases
    from medseg.infer.pipeline import check_distinct_folders

    one, _ = discover_cases(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    two = [one[0], replace(one[0], source=shared / "ct/radcttace_0697/image.nii.gz")]
    with pytest.raises(UsageError) as err:
        check_distinct_folders(two, tmp_path / "out")
    assert err.value.exit_code == 2 and "radcttace_0697" in err.value.one_line()
    check_distinct_folders(one, tmp_path / "out")


@pytest.fixture
def run_cli(monkeypatch, tmp_path_factory, capsys):
    """`medseg infer ...` in this process: (exit code, stdout, stderr)."""
    from medseg.cli.main import main

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))

    def invoke(*args) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return invoke


def _audit_ends() -> list[dict]:
    from medseg.audit.config import load_config
    from medseg.audit.store import AuditStore

    with AuditStore.open(load_config()) as store:
        return [r.body for r in store.records() if r.body["kind"] == "end"]


def _edited_copy(folder, dest):
    """A copy of a built-in model folder (card and weights) whose card has another HU window."""
    import shutil

    dest.mkdir(parents=True)
    shutil.copy(folder / "weights.pt", dest / "weights.pt")
    text = (folder / "model_card.yaml").read_text()
    assert "  a_min: -200.0" in text
    (dest / "model_card.yaml").write_text(text.replace("  a_min: -200.0", "  a_min: -1000.0"))
    return dest


def _summary(folder) -> dict:
    import json

    return json.loads((folder / "summary.json").read_text())


def test_card_digest_table_matches_the_built_in_cards():
    """Item 3: the checked-in table of built-in card digests is the cards' SHA-256, one per built-in model."""
    from medseg.digests import file_sha256
    from medseg.models.registry import ZOO, builtin_card_digests

    cards = {p.parent.name: file_sha256(p) for p in ZOO.glob("*/model_card.yaml")}
    assert builtin_card_digests() == cards


def test_edited_card_is_recorded_in_summary_and_audit(shared, tmp_path, run_cli):
    """Item 3: a model folder with an edited card: its card's SHA-256 is in summary.json's model block and the
    audit record, and differs from the installed model's."""
    from medseg.digests import file_sha256
    from medseg.models.registry import ZOO

    src = shared / "ct/totalseg_example_ct_sm/image.nii.gz"
    edited = _edited_copy(ZOO / "abdomen-2.2", tmp_path / "model")
    card = edited / "model_card.yaml"  # re-versioned: a copy claiming the built-in's name and version is refused
    card.write_text(card.read_text().replace("\nversion: 2.2.0\n", "\nversion: 2.2.0-site1\n", 1))
    runs = {"installed": ZOO / "abdomen-2.2", "edited": edited}
    for name, folder in runs.items():
        code, _, _ = run_cli("infer", src, "--model", folder, "--out", tmp_path / name, "--backend", "onnxruntime")
        assert code == 0
        model = _summary(tmp_path / name / "image")["model"]
        assert model["card_sha256"] == file_sha256(folder / "model_card.yaml")
        assert model["int8_sha256"] is None
    ends = _audit_ends()
    assert [e["params"]["card_sha256"] for e in ends[-2:]] == [file_sha256(f / "model_card.yaml") for f in
                                                               runs.values()]  # fmt: skip
    assert ends[-1]["params"]["card_sha256"] != ends[-2]["params"]["card_sha256"]


def test_edited_built_in_card_is_refused(shared, tmp_path, run_cli, monkeypatch):
    """Item 3: a built-in model whose card was edited in place is refused, exit 4, one error line."""
    import medseg.models.registry as registry

    zoo = tmp_path / "zoo"
    _edited_copy(registry.ZOO / "abdomen-2.2", zoo / "abdomen-2.2")
    monkeypatch.setattr(registry, "ZOO", zoo.resolve())
    src = shared / "ct/totalseg_example_ct_sm/image.nii.gz"
    code, _, err = run_cli("infer", src, "--model", "abdomen-2.2", "--out", tmp_path / "out")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 4 and len(lines) == 1 and "model card altered" in lines[0]
    assert not (tmp_path / "out" / "image").exists()


def test_int8_run_records_the_int8_files(shared, tmp_path, run_cli):
    """Item 3: --precision int8 records the INT8 files that ran (with their SHA-256), not only the f32 weights."""
    from medseg.models.registry import resolve_model

    src = shared / "ct/totalseg_example_ct_sm/image.nii.gz"
    code, _, _ = run_cli("infer", src, "--model", "abdomen-2.2", "--precision", "int8", "--out", tmp_path)
    assert code == 0
    expected = dict(resolve_model("abdomen-2.2").card.int8.files)
    assert _summary(tmp_path / "image")["model"]["int8_sha256"] == expected
    assert _audit_ends()[-1]["params"]["int8_sha256"] == expected


def test_rules_applied_are_recorded(shared, tmp_path, run_cli, monkeypatch):
    """Item 4: an edited qc_rules.yaml is traceable (its SHA-256 in summary.json and the audit params), and the
    low_confidence limit recorded is the one applied: the card's (abdomen 2.2.0: 0.2935) over the rules file's."""
    import medseg.infer.qc as qc
    from medseg.digests import file_sha256
    from medseg.infer.qc import confidence_limit

    edited = tmp_path / "qc_rules.yaml"
    edited.write_text(
        qc.RULES_FILE.read_text().replace("max_uncertain_fraction: 0.167", "max_uncertain_fraction: 0.01")
    )
    monkeypatch.setattr(qc, "RULES_FILE", edited)
    qc.rules.cache_clear()
    try:
        assert confidence_limit(CARD) == (0.01, "rules")
        src = shared / "ct/totalseg_example_ct_sm/image.nii.gz"
        code, _, _ = run_cli("infer", src, "--model", "abdomen-2.2", "--out", tmp_path / "out")
        assert code == 0
    finally:
        qc.rules.cache_clear()
    record = _summary(tmp_path / "out" / "image")["qc"]
    assert record["rules_sha256"] == file_sha256(edited)
    assert (record["low_confidence_limit"], record["low_confidence_limit_from"]) == (0.2935, "card")
    params = _audit_ends()[-1]["params"]
    assert params["qc_rules_sha256"] == file_sha256(edited)
    assert (float(params["low_confidence_limit"]), params["low_confidence_limit_from"]) == (0.2935, "card")


def test_caption_is_wrapped_and_names_each_flag_with_its_organ(shared):
    """Item 5: a 587 px caption on a narrow sheet: every flag (with its organ) is on some caption line, and the
    sheet grows by the extra lines instead of cutting the caption off."""
    from PIL import Image, ImageDraw

    from medseg.infer.pipeline import _caption
    from medseg.infer.qc import QCFlag
    from medseg.writers.preview import CAPTION_HEIGHT, caption_lines, render_preview

    flags = [
        QCFlag("volume_implausible", "result", "spleen volume 2000 ml", "spleen"),
        QCFlag("organ_truncated", "result", "liver touches the edge", "liver"),
        QCFlag("low_confidence", "result", "liver uncertain", "liver"),
    ]
    summary = {
        "case": "1.2.840.113619.2.55.3.604688119.971.1187093412",
        "organs": [{"name": "liver", "volume_ml": 1500.0, "confidence": {"uncertain_fraction": 0.31}},
                   {"name": "spleen", "volume_ml": 2000.0}],
        "model": {"name": "abdomen", "version": "2.2.0"},
    }  # fmt: skip
    caption = _caption(summary, flags)
    for label in ("spleen: volume_implausible", "liver: organ_truncated", "liver: low_confidence"):
        assert label in caption
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines = caption_lines(caption, 432, measure)
    assert len(lines) > 1 and " ".join(lines) == caption and all(measure(line) <= 432 for line in lines)
    assert caption_lines("x" * 200, 100, measure) and "".join(caption_lines("x" * 200, 100, measure)) == "x" * 200

    from dataclasses import replace

    whole = read_nifti(shared / "ct/radcttace_1211/image.nii.gz")
    narrow = np.ascontiguousarray(whole.array[80:120, 80:120])  # 62 mm wide, 517 mm long: a 400-odd px sheet
    volume = Volume(narrow, replace(whole.geometry, shape=narrow.shape), whole.meta)
    truth = read_nifti(shared / "ct/radcttace_1211/liver.nii.gz").array[80:120, 80:120]
    labels = np.ascontiguousarray(truth > 0).astype(np.uint8)
    bare = render_preview(volume, labels)
    sheet = render_preview(volume, labels, caption)
    wrapped = caption_lines(caption, sheet.width - 12, measure)
    assert len(wrapped) > 1 and sheet.height > bare.height + CAPTION_HEIGHT
    assert sheet.width == bare.width


def _slices(shared, case: str, stop: int, dest) -> None:
    import nibabel as nib

    image = nib.load(shared / f"ct/{case}/image.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, :stop], image.affine), dest)


def test_scan_without_the_liver_is_refused_as_organ_not_found(shared, tmp_path, run_cli):
    """Item 6: radcttace_1211's lower 110 slices (pelvis, no liver in view; NIfTI, no BodyPartExamined) gave a few
    ml of "liver", served: now refused as organ_not_found (exit 5, no label map), segmented with --force; the same
    scan up to 30 mm into the liver's lower tip (manual label 89 ml, the model finds 44 ml) is served."""
    pelvis, tip = tmp_path / "pelvis.nii.gz", tmp_path / "tip.nii.gz"
    _slices(shared, "radcttace_1211", 110, pelvis)
    _slices(shared, "radcttace_1211", 150, tip)
    code, _, err = run_cli("infer", pelvis, "--out", tmp_path / "out")
    assert code == 5 and "organ_not_found" in err and "--force" in err
    summary = _summary(tmp_path / "out" / "pelvis")
    assert summary["status"] == "qc_rejected" and summary["qc"]["refused"] == ["organ_not_found"]
    assert sorted(p.name for p in (tmp_path / "out" / "pelvis").iterdir()) == ["preview.png", "summary.json"]
    code, _, _ = run_cli("infer", pelvis, "--out", tmp_path / "forced", "--force")
    forced = _summary(tmp_path / "forced" / "pelvis")
    assert code == 0 and forced["qc"]["forced"] == ["organ_not_found"] and forced["outputs"]["labels"]
    code, _, err = run_cli("infer", tip, "--out", tmp_path / "out")
    found = _summary(tmp_path / "out" / "tip")
    assert code == 0, err
    assert "organ_not_found" not in {f["code"] for f in found["qc"]["flags"]}, found["organs"][0]["volume_ml"]


def test_secondary_organ_not_found_does_not_refuse(shared):
    """Item 6: organ_not_found refuses for the main organ only (a second organ out of view is a finding)."""
    volume = read_nifti(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    empty = organ_stats(np.zeros(volume.shape, np.uint8), 1, volume)
    assert [f.refuses for f in check_result("liver", empty, volume.shape, CARD)] == [True]
    assert [f.refuses for f in check_result("spleen", empty, volume.shape, CARD, main=False)] == [False]


@pytest.mark.parametrize("text", ["Liver", " LIVER", "liver"])
def test_summary_organ_is_the_normalised_name(tmp_path, text):
    """Item 7: summary.json's `organ` is the parsed, normalised name whatever --organ's case and spaces, so post-market
    monitoring counts one study once."""
    from medseg.infer.pipeline import InferSettings

    settings = InferSettings(text, tmp_path)
    assert (settings.organ, settings.organs) == ("liver", ("liver",))
    assert InferSettings(" Liver , SPLEEN", tmp_path).organ == "liver,spleen"


def test_cli_summary_records_the_normalised_organ(shared, tmp_path, run_cli):
    """Item 7, end to end: --organ ' LIVER' on a real CT writes organ "liver" in summary.json."""
    code, _, _ = run_cli("infer", shared / "ct/totalseg_example_ct_sm/image.nii.gz", "--organ", " LIVER",
                         "--out", tmp_path, "--no-preview")  # fmt: skip
    assert code == 0 and _summary(tmp_path / "image")["organ"] == "liver"


def test_following_the_refusal_hint_needs_no_overwrite(shared, tmp_path, run_cli):
    """Item 8: "rerun with --force" after a refusal, and a rerun without --strict after a --strict rejection (which
    kept its preview), replace the record of no result without --overwrite; a real result still needs it."""
    import nibabel as nib

    src = shared / "ct/totalseg_example_ct_sm/image.nii.gz"
    image = nib.load(src)
    windowed = tmp_path / "windowed.nii.gz"  # an 8-bit display image: refused as not_hu
    display = np.clip((np.asarray(image.dataobj, dtype=np.float32) + 160) / 400 * 255, 0, 255).astype(np.uint8)
    nib.save(nib.Nifti1Image(display, image.affine), windowed)
    out = tmp_path / "out"
    assert run_cli("infer", windowed, "--out", out)[0] == 5
    code, _, err = run_cli("infer", windowed, "--out", out, "--force")
    assert code == 0, err
    assert _summary(out / "windowed")["qc"]["forced"] == ["not_hu"]

    src = shared / "ct/radcttace_0697/image.nii.gz"  # flagged low_confidence (a result flag): the preview is kept
    code, _, err = run_cli("infer", src, "--out", out, "--strict")
    assert code == 5 and {p.name for p in (out / "image").iterdir()} == {"summary.json", "preview.png"}, err
    code, _, err = run_cli("infer", src, "--out", out)
    assert code == 0 and _summary(out / "image")["status"] == "flagged", err
    code, _, err = run_cli("infer", src, "--out", out)
    assert code == 2 and "--overwrite" in err
