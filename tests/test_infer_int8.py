"""INT8: the exact sub-pixel decoder, the shipped INT8 export's evidence, its digests, and `--precision int8`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.cli.main import main
from medseg.errors import ProcessingError, UsageError
from medseg.infer.predict import predict_labels
from medseg.infer.runtime import int8_runner, load_runner
from medseg.io import read_image
from medseg.models.registry import ZOO, resolve_model
from medseg.models.subpixel import replace_transposed_convs, subpixel_module
from medseg.train.manifest import digest_path, load_manifest
from medseg.train.quantize import MAX_DICE_DROP, MAX_VOLUME_DIFF

REPO = Path(__file__).resolve().parents[1]


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(1, 6),
    c_out=st.integers(1, 6),
    shape=st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_subpixel_form_equals_the_transposed_convolution(c_in, c_out, shape, bias, seed) -> None:
    torch.manual_seed(seed)
    conv = torch.nn.ConvTranspose3d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=bias)
    x = torch.randn(2, c_in, *shape)
    with torch.no_grad():
        expected, got = conv(x), subpixel_module(conv)(x)
    assert got.shape == expected.shape == (2, c_out, *(2 * s for s in shape))
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_other_transposed_convolutions_are_refused() -> None:
    with pytest.raises(ValueError, match="only ConvTranspose3d"):
        subpixel_module(torch.nn.ConvTranspose3d(2, 2, 2, stride=2))


def test_shipped_network_in_subpixel_form_gives_the_same_labels() -> None:
    net = resolve_model("liver").load_network("cpu")
    x = torch.rand(1, 1, 96, 96, 96, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        before = net(x)
        assert replace_transposed_convs(net) == 4
        after = net(x)
    assert float((before - after).abs().max()) < 1e-4
    assert bool((before.argmax(1) == after.argmax(1)).all())


# Every real manual case each shipped model was not trained (nor calibrated) on.
EVALUATED = {
    "liver": {"ct/chaos_ct_sample", "ct/radcttace_1211", "ct/radcttace_0697"},
    "abdomen": {"ct/radcttace_0697"},
    "abdomen-2.1": {"ct/radcttace_0697"},
    "abdomen-2.2": {"ct/radcttace_0697"},
}


@pytest.mark.parametrize("name", sorted(EVALUATED))
def test_shipped_int8_export_carries_passing_evidence_on_cases_it_was_not_calibrated_on(shared, name) -> None:
    card = resolve_model(name).card
    assert card.int8 is not None, f"the shipped {name} model has no INT8 export"
    manifest, sha = load_manifest(REPO / "data_manifests" / f"{card.int8.calibration['manifest']}.json")
    assert sha == card.int8.calibration["manifest_sha256"]
    training_digests = {d for e in manifest.entries for d in e.sha256.values()}
    cases = {row["case"] for row in card.int8.acceptance}
    assert EVALUATED[name] <= cases
    for row in card.int8.acceptance:
        assert digest_path(shared / row["case"] / "image.nii.gz") not in training_digests
        assert row["dice_f32"] - row["dice_int8"] <= MAX_DICE_DROP
        assert abs(row["volume_ml_int8"] - row["volume_ml_f32"]) <= MAX_VOLUME_DIFF * row["volume_ml_f32"]
    assert card.int8.parity["argmax_agreement"] >= 0.99


@pytest.mark.parametrize("name", sorted(EVALUATED))
def test_int8_reproduces_its_recorded_dice_on_a_real_manual_case(shared, name) -> None:
    model = resolve_model(name)
    row = next(r for r in model.card.int8.acceptance if r["case"] == "ct/radcttace_0697")
    volume = read_image(shared / row["case"] / "image.nii.gz")
    truth = read_image(shared / row["case"] / "liver.nii.gz").array > 0
    mask = predict_labels(volume, model.card, int8_runner(model), 1).labels == 1
    dice = 2 * float((mask & truth).sum()) / float(mask.sum() + truth.sum())
    assert dice == pytest.approx(row["dice_int8"], abs=1e-3)


def test_altered_int8_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "liver"
    shutil.copytree(ZOO / "liver", folder)
    data = bytearray((folder / "int8" / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "int8" / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ProcessingError, match="altered"):
        int8_runner(resolve_model(folder))


def test_int8_needs_a_validated_export_and_the_cpu_runtime(tmp_path: Path) -> None:
    folder = tmp_path / "liver"
    shutil.copytree(ZOO / "liver", folder, ignore=shutil.ignore_patterns("int8"))
    card = (folder / "model_card.yaml").read_text()
    card = card.replace("\nversion: 1.0.0\n", "\nversion: 1.0.0-no-int8\n", 1)  # an edited copy gets its own version
    (folder / "model_card.yaml").write_text(card[: card.index("\nint8:")] + "\n")
    with pytest.raises(UsageError, match="no validated INT8 export"):
        load_runner(resolve_model(folder), precision="int8")
    with pytest.raises(UsageError, match="OpenVINO on the CPU only"):
        load_runner(resolve_model("liver"), backend="torch", precision="int8")


def test_infer_cli_with_int8_writes_a_seg_and_records_the_runtime(shared, tmp_path, capsys) -> None:
    import json

    with pytest.raises(SystemExit) as done:
        main(["infer", str(shared / "ct/chaos_ct_sample/dicom"), "--precision", "int8", "--out", str(tmp_path)])
    assert done.value.code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "dicom" / "summary.json").read_text())
    assert summary["software"]["backend"] == "openvino-int8"
    assert summary["model"]["sha256"] == resolve_model(None, "liver").card.weights.sha256
    assert (tmp_path / "dicom" / "seg.dcm").is_file()
    assert np.isfinite(summary["organs"][0]["volume_ml"])


def test_f32_convolutions_keeps_the_first_and_last_asked_for() -> None:
    """`names[-0:]` is the whole list in Python: asking to keep no trailing convolution must keep none."""
    from medseg.train.quantize import f32_convolutions

    names = [f"conv{i}" for i in range(6)]
    assert f32_convolutions(names, 2, 0) == ["conv0", "conv1"]
    assert f32_convolutions(names, 0, 0) == []
    assert f32_convolutions(names, 2, 2) == ["conv0", "conv1", "conv4", "conv5"]
    assert f32_convolutions(names, 0, 1) == ["conv5"]
