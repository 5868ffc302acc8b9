"""--organ liver,spleen: validated organs only, one label map numbered in request order, one SEG segment per organ
with SNOMED CT codes from pydicom's code dictionary, per-organ confidence and the low_confidence flag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.sr.codedict import codes

from medseg.errors import UsageError
from medseg.infer.cases import discover_cases
from medseg.infer.organs import parse_organs, renumber, select_organs
from medseg.infer.pipeline import InferSettings, run_case
from medseg.infer.qc import check_confidence, rules
from medseg.infer.runtime import Runner
from medseg.io import read_nifti
from medseg.models.registry import InstalledModel, resolve_model, sha256_file
from medseg.postprocess.confidence import organ_confidence

LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "heart"}


def multi_organ_folder(folder: Path) -> Path:
    """A 4-class model folder whose card validates liver and spleen but gives no figure for the heart."""
    import torch

    from medseg.models.card import NetworkSpec
    from medseg.models.network import build_network

    spec = NetworkSpec(out_channels=4, channels=(4, 8), strides=(2,), num_res_units=1)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(build_network(spec).state_dict(), folder / "weights.pt")
    card = {
        "name": "test-abdomen", "version": "0.0.1", "organ": "liver", "labels": LABELS, "modality": "CT",
        "intended_use": "tests only", "spacing": [3.0, 3.0, 3.0], "roi_size": [64, 64, 64],
        "network": spec.model_dump(mode="json"),
        "weights": {"file": "weights.pt", "sha256": sha256_file(folder / "weights.pt")},
        "metrics": {"locked_test_real_ct": {"mean_dice": 0.5}, "organs": {"spleen": {"mean_dice": 0.5}}},
    }  # fmt: skip
    (folder / "model_card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder


def band_runner() -> Runner:
    """A stand-in network with a known answer on the [0, 1]-windowed CT: liver 25-175 HU, spleen > 250 HU, heart
    never; logits scaled so the borders are soft (some uncertainty)."""

    def predict(batch: np.ndarray) -> np.ndarray:
        x = batch[:, 0]
        liver = np.minimum(x - 0.45, 0.75 - x) * 40
        spleen = (x - 0.9) * 40
        zero = np.zeros_like(x)
        return np.stack([zero, liver, spleen, zero - 50], axis=1).astype(np.float32)

    return Runner("stand-in", 2, predict)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> InstalledModel:
    return resolve_model(multi_organ_folder(tmp_path_factory.mktemp("abdomen") / "m"))


def test_parse_organs_accepts_a_comma_list_and_refuses_empty_or_repeated_names() -> None:
    assert parse_organs("liver, Spleen") == ("liver", "spleen")
    for bad in ("liver,,spleen", "liver,liver", ""):
        with pytest.raises(UsageError):
            parse_organs(bad)


def test_only_organs_with_validation_figures_are_served(model: InstalledModel) -> None:
    assert model.card.validated_organs == ("liver", "spleen")
    assert select_organs(model.card, ("spleen", "liver")) == {2: "spleen", 1: "liver"}
    with pytest.raises(UsageError, match="no validation figures for heart") as exc:
        select_organs(model.card, ("liver", "heart"))
    assert "liver, spleen" in (exc.value.hint or "")
    with pytest.raises(UsageError, match="has no pancreas output"):
        select_organs(model.card, ("pancreas",))
    shipped = resolve_model(None, "liver").card
    assert "liver" in shipped.validated_organs


@given(st.lists(st.integers(0, 3), min_size=8, max_size=64), st.permutations([1, 2, 3]))
@settings(max_examples=40, deadline=None)
def test_renumber_keeps_each_requested_organ_as_its_position(values: list[int], order: list[int]) -> None:
    labels = np.asarray(values, dtype=np.uint8).reshape(-1, 1, 1)
    chosen = {v: LABELS[v] for v in order[:2]}
    out, names = renumber(labels, chosen)
    assert names == {i: LABELS[v] for i, v in enumerate(order[:2], start=1)}
    for i, v in enumerate(order[:2], start=1):
        assert np.array_equal(out == i, labels == v)
    assert not out[labels == order[2]].any()


def test_liver_and_spleen_give_one_label_map_and_a_seg_with_two_coded_segments(
    model: InstalledModel, shared: Path, tmp_path: Path
) -> None:
    cases, _ = discover_cases(shared / "ct/chaos_ct_sample/dicom")
    s = InferSettings("liver", tmp_path, organs=("liver", "spleen"))
    result = run_case(cases[0], model, band_runner(), s)
    folder = tmp_path / cases[0].name
    assert sorted(p.name for p in folder.iterdir()) == ["labels.nii.gz", "preview.png", "seg.dcm", "summary.json"]
    labels = np.asarray(read_nifti(folder / "labels.nii.gz").array)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    summary = json.loads((folder / "summary.json").read_text())
    organs = {o["name"]: o for o in summary["organs"]}
    assert [(o["name"], o["label"]) for o in summary["organs"]] == [("liver", 1), ("spleen", 2)]
    for name, o in organs.items():
        assert o["voxel_count"] == int((labels == o["label"]).sum()) > 0, name
        assert o["confidence"]["uncertain_fraction"] >= 0  # a fraction of the organ volume (can exceed 1)
    seg = pydicom.dcmread(folder / "seg.dcm")
    segments = {int(x.SegmentNumber): x for x in seg.SegmentSequence}
    assert sorted(segments) == [1, 2]
    for number, code in ((1, codes.SCT.Liver), (2, codes.SCT.Spleen)):
        prop = segments[number].SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator, prop.CodeMeaning) == (code.value, "SCT", code.meaning)
        assert (
            segments[number].SegmentLabel == organs[next(k for k, v in organs.items() if v["label"] == number)]["name"]
        )
    assert result.status in ("ok", "flagged")


def test_a_single_organ_of_a_multi_organ_model_keeps_the_organ_file_name(
    model: InstalledModel, shared: Path, tmp_path: Path
) -> None:
    cases, _ = discover_cases(shared / "ct/chaos_ct_sample/dicom")
    run_case(cases[0], model, band_runner(), InferSettings("spleen", tmp_path, organs=("spleen",), preview=False))
    folder = tmp_path / cases[0].name
    spleen = np.asarray(read_nifti(folder / "spleen.nii.gz").array)
    assert set(np.unique(spleen).tolist()) == {0, 1}
    segments = pydicom.dcmread(folder / "seg.dcm").SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["spleen"]
    assert segments[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Spleen.value


def test_cli_refuses_an_organ_without_validation_figures(model: InstalledModel, shared: Path, tmp_path: Path) -> None:
    medseg = Path(sys.executable).with_name("medseg")
    args = [str(medseg), "infer", str(shared / "ct/totalseg_example_ct_sm/image.nii.gz"), "--organ", "liver,heart",
            "--model", str(model.folder), "--out", str(tmp_path / "out")]  # fmt: skip
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "no validation figures for heart" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_confidence_is_low_for_a_sharp_organ_and_high_for_a_blurred_one() -> None:
    from scipy import ndimage

    mask = np.zeros((40, 40, 40), bool)
    mask[10:30, 10:30, 10:30] = True
    other = np.zeros_like(mask)
    other[30:36, 10:30, 10:30] = True
    results = []
    for sigma in (0.0, 3.0):
        fg = ndimage.gaussian_filter(mask.astype(np.float32), sigma) if sigma else mask.astype(np.float32)
        nb = other.astype(np.float32) * (1 - fg)
        probs = np.stack([1 - fg - nb, fg, nb])
        results.append(organ_confidence(probs, {1: "liver", 2: "spleen"}))
    sharp, blurred = results
    assert sharp["liver"].uncertain_fraction == 0 and sharp["liver"].boundary_entropy < 1e-3
    assert blurred["liver"].uncertain_fraction > 0.1 and blurred["liver"].boundary_entropy > 0.1
    assert 0.1 < sharp["liver"].neighbour_contact < 0.3, "one face of six touches the spleen"
    assert sharp["spleen"].neighbour_contact > 0.3


def test_low_confidence_flag_follows_the_rules_file() -> None:
    limit = float(rules()["low_confidence"]["max_uncertain_fraction"])
    assert check_confidence("liver", {"uncertain_fraction": limit}) == []
    (flag,) = check_confidence("liver", {"uncertain_fraction": limit + 0.01})
    assert flag.code == "low_confidence" and flag.stage == "result" and "liver" in flag.reason


def test_a_model_calibrated_limit_overrides_the_rules_file() -> None:
    from medseg.models.card import ConfidenceCalibration, ModelCard

    card = ModelCard.load(Path(__file__).resolve().parents[1] / "medseg/models/zoo/liver/model_card.yaml")
    limit = float(rules()["low_confidence"]["max_uncertain_fraction"])
    own = card.model_copy(update={"confidence": ConfidenceCalibration(max_uncertain_fraction=limit + 0.1,
                                                                        chosen_on="test")})  # fmt: skip
    conf = {"uncertain_fraction": limit + 0.05}
    assert check_confidence("liver", conf, card) and not check_confidence("liver", conf, own)
    with pytest.raises(ValueError):
        ConfidenceCalibration(max_uncertain_fraction=0.0, chosen_on="test")


def test_confidence_in_the_organ_box_equals_the_whole_volume_definition() -> None:
    """The box crop is an optimisation only: same figures as the definition computed over the whole volume."""
    from scipy import ndimage

    from medseg.postprocess.confidence import BAND_VOX, normalised_entropy

    rng = np.random.default_rng(5)
    logits = np.zeros((4, 48, 40, 36), np.float32)
    for c in (1, 2, 3):
        blob = np.zeros(logits.shape[1:], np.float32)
        blob[6 + 9 * c : 22 + 9 * c, 8:30, 6:28] = 1
        logits[c] = ndimage.gaussian_filter(blob, 2) * 12 - 4 + 0.3 * rng.standard_normal(blob.shape)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    argmax = probs.argmax(0)
    got = organ_confidence(probs, {1: "liver", 2: "spleen", 3: "heart"})
    for c, name in ((1, "liver"), (2, "spleen"), (3, "heart")):
        mask = argmax == c
        band = ndimage.binary_dilation(mask, iterations=BAND_VOX) & ~ndimage.binary_erosion(mask, iterations=BAND_VOX)
        surface = mask & ~ndimage.binary_erosion(mask)
        contact = (surface & ndimage.binary_dilation((argmax > 0) & ~mask)).sum() / surface.sum()
        uncertain = ((probs[c] > 0.2) & (probs[c] < 0.8)).sum() / mask.sum()
        want = (normalised_entropy(probs)[band].mean(), uncertain, contact)
        assert np.allclose(
            (got[name].boundary_entropy, got[name].uncertain_fraction, got[name].neighbour_contact), want, atol=1e-5
        ), name


@pytest.mark.parametrize("failing", ["write_preview", "write_seg"])
def test_a_writer_failing_on_either_thread_leaves_no_outputs(
    model: InstalledModel, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The label map and preview are written on a helper thread while the SEG is built: an error on either side is
    raised after both ended, and every output already written (on both threads) is removed; what remains is the
    failed summary.json that post-market monitoring counts (README: a case that fails writes only that)."""
    import medseg.infer.pipeline as pipeline

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, failing, disk_full)
    cases, _ = discover_cases(shared / "ct/chaos_ct_sample/dicom")
    with pytest.raises(OSError, match="No space left"):
        run_case(cases[0], model, band_runner(), InferSettings("liver", tmp_path, organs=("liver", "spleen")))
    folder = tmp_path / cases[0].name
    assert sorted(p.name for p in folder.rglob("*")) == ["summary.json"]
    assert json.loads((folder / "summary.json").read_text())["status"] == "failed"
