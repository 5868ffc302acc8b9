"""Accuracy of an installed model on the real CTs of a manifest split, through the inference engine's own path.

Each CT is segmented with `medseg.infer.predict.predict_labels` (the same preprocessing, sliding window and
post-processing as `medseg infer`), and compared with its reference label on the input grid: Dice and HD95 (mm).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from medseg.models.registry import InstalledModel
from medseg.train.evaluate import CaseScore, score
from medseg.train.manifest import Manifest


def evaluate_model(model: InstalledModel, manifest: Manifest, split: str, data_root: Path, device: str = "cpu",
                   batch_size: int = 2) -> list[CaseScore]:  # fmt: skip
    """Per-case Dice and HD95 of `model` on the CT pairs of `split` (at the CT's native resolution)."""
    from medseg.infer.predict import predict_labels
    from medseg.infer.runtime import torch_runner
    from medseg.io import read_image

    runner = torch_runner(model, device=device, batch_size=batch_size)
    scores = []
    for e in manifest.split(split, kind="ct_pair"):
        assert e.image is not None and e.liver_value is not None
        volume = read_image(data_root / e.image)
        ref = read_image(data_root / e.label)
        ref_mask = _on_grid(ref, volume) == e.liver_value
        pred = predict_labels(volume, model.card, runner, batch_size)
        liver = next(k for k, v in model.card.labels.items() if v == "liver")
        scores.append(score(pred.labels == liver, ref_mask, volume.spacing, e.case_id, e.label_type))
    return scores


def _on_grid(label: Any, volume: Any) -> np.ndarray:
    """The label array on the image's voxel grid (nearest); identical grids pass through unchanged."""
    if label.geometry.same_grid(volume.geometry, tol_mm=0.5):
        return np.asarray(label.array)
    import SimpleITK as sitk

    out = sitk.Resample(label.to_sitk(), volume.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0))


def metrics_table(scores: list[CaseScore], manifest_name: str, manifest_sha: str) -> dict[str, Any]:
    """The `metrics` section of a model card."""
    return {
        "test_set": {"manifest": manifest_name, "sha256": manifest_sha},
        "cases": [asdict(s) for s in scores],
        "mean_dice": float(np.mean([s.dice for s in scores])) if scores else None,
        "evaluation": "medseg.infer.predict_labels (torch, CPU), native-grid metrics (medseg.metrics Dice, HD95)",
    }
