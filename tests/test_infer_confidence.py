"""The low_confidence flag on real CT with manual liver labels: the shipped model's wrong results are flagged.

Reproduces two rows of the confidence table in docs/training.md (bench/bench_confidence.py): radcttace_1211 and
radcttace_0697 as stored, both under Dice 0.90 with the liver model 1.0.0, are flagged at the rules-file threshold
(chosen on synthetic volumes only), while the clear, sharp-edged masks of a stand-in are not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.infer.predict import predict_labels
from medseg.infer.qc import check_confidence, rules
from medseg.infer.runtime import torch_runner
from medseg.io import read_image
from medseg.models.registry import resolve_model


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["radcttace_1211", "radcttace_0697"])
def test_shipped_model_flags_its_wrong_results_on_real_ct(shared: Path, case: str) -> None:
    model = resolve_model(None, "liver")
    if model.card.version != "1.0.0":
        pytest.fail(f"the table was measured with liver 1.0.0, the default is {model.card.version}: re-measure it")
    volume = read_image(shared / "ct" / case / "image.nii.gz")
    truth = np.asarray(read_image(shared / "ct" / case / "liver.nii.gz").array) > 0
    pred = predict_labels(volume, model.card, torch_runner(model, batch_size=2), 2)
    dice = _dice(pred.labels == 1, truth)
    conf = pred.confidence["liver"].to_json()
    assert dice < 0.90, f"{case}: Dice {dice:.3f}; the table says under 0.90"
    flags = check_confidence("liver", conf)
    assert [f.code for f in flags] == ["low_confidence"], f"{case}: uncertain fraction {conf['uncertain_fraction']}"
    assert conf["uncertain_fraction"] > 1.5 * float(rules()["low_confidence"]["max_uncertain_fraction"])


def test_a_real_ct_stored_clipped_at_1024_gives_the_same_mask(shared: Path) -> None:
    """Archives that clip at +-1024 HU: the model window (-200..300 HU) makes it invisible (Dice >= 0.98)."""
    model = resolve_model(None, "liver")
    volume = read_image(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    assert volume.array.min() < -1024 and volume.array.max() > 1024, "the case must hold values beyond +-1024"
    runner = torch_runner(model, batch_size=2)
    stored = predict_labels(volume, model.card, runner, 2).labels == 1
    clipped = predict_labels(volume.with_array(np.clip(volume.array, -1024, 1024)), model.card, runner, 2).labels == 1
    assert stored.sum() > 10_000
    assert _dice(stored, clipped) >= 0.98
