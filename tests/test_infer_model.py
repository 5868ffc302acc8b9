"""The shipped default liver model (abdomen 2.2.0) through `medseg infer`, on the real CT with a manual liver label.

The models ship in `medseg/models/zoo/`; a missing model fails the suite.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.cli.main import main
from medseg.io import read_image, read_nifti
from medseg.models.registry import ZOO, resolve_model

MIN_DICE = 0.5  # "finds the liver"; the model card's own figure for this case is checked more tightly below


REAL_CT_SECTIONS = ("locked_test_real_ct", "trained_on_real_ct")


def reported_dice(metrics: dict, case: str = "chaos_ct_set3") -> float:
    """The Dice the model card reports for `case` on real CT (locked test, or trained on and said so)."""
    cases = [c for section in REAL_CT_SECTIONS for c in metrics.get(section, {}).get("cases", [])]
    matches = [c["dice"] for c in cases if c["case"] == case]
    assert len(matches) == 1, f"model card reports no single locked-test Dice for {case}: {cases}"
    return float(matches[0])


def test_default_model_is_installed():
    """Missing data fails loudly: the shipped model is part of the product, not an optional extra."""
    for name in ("abdomen-2.2", "abdomen-2.1", "abdomen", "liver"):
        assert (ZOO / name / "model_card.yaml").is_file(), f"shipped model {name} missing in {ZOO / name}"


def test_default_model_segments_the_liver(shared, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    src = shared / "ct/chaos_ct_sample/dicom"
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(src), "--organ", "liver", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 0, err
    case = tmp_path / "o" / "dicom"
    labels = read_nifti(case / "liver.nii.gz")
    truth = read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz").array > 0
    pred = labels.array == 1
    dice = 2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum())
    summary = json.loads((case / "summary.json").read_text())
    card = resolve_model(None, "liver").card
    assert summary["model"]["sha256"] == card.weights.sha256
    print(
        f"default model {card.name} {card.version}: Dice {dice:.3f} on chaos (manual label), "
        f"{summary['organs'][0]['volume_ml']:.0f} ml vs 1417.5 ml"
    )
    assert dice >= MIN_DICE
    reported = reported_dice(card.metrics)  # medseg infer reproduces the accuracy the model card states
    assert dice >= reported - 0.02, f"card reports Dice {reported:.3f} on chaos, medseg infer gives {dice:.3f}"
    volume = read_image(src)
    centroid = np.asarray(summary["organs"][0]["centroid_lps_mm"])
    body_centre = volume.geometry.index_to_world(np.asarray(volume.shape) / 2 - 0.5)[0]
    assert centroid[0] < body_centre[0]  # LPS x grows to the patient's left: the liver lies on the right
    assert (case / "seg.dcm").is_file()


def test_default_model_agrees_with_a_plain_monai_pipeline(shared, tmp_path, monkeypatch):
    """medseg infer (OpenVINO, own resampling, clean-up) vs MONAI transforms + sliding_window_inference (eager)."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import Orientation, ScaleIntensityRange, Spacing

    from medseg.infer.predict import predict_labels
    from medseg.infer.runtime import load_runner
    from medseg.preprocess import model_grid, resample_to_grid

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    model = resolve_model(None, "liver")
    card = model.card
    volume = read_image(shared / "ct/chaos_ct_sample/dicom")
    x = Orientation(axcodes="RAS", labels=None)(volume.to_metatensor().float())
    x = ScaleIntensityRange(card.intensity.a_min, card.intensity.a_max, 0.0, 1.0, clip=True)(
        Spacing(pixdim=card.spacing, mode="bilinear")(x)
    )
    with torch.inference_mode():
        out = sliding_window_inference(x[None], card.roi_size, 2, model.load_network(), 0.25, "gaussian")
    reference = out[0].argmax(0).numpy() == 1
    runner = load_runner(model)
    ours = predict_labels(volume, card, runner, runner.batch_size).labels == 1  # the liver among the classes
    ours_on_model_grid = resample_to_grid(
        ours.astype(np.float32), volume.geometry, model_grid(volume.geometry, card.spacing), 0
    )
    agreement = (
        2 * (reference & (ours_on_model_grid > 0.5)).sum() / (reference.sum() + (ours_on_model_grid > 0.5).sum())
    )
    assert agreement > 0.95
