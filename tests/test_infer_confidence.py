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
