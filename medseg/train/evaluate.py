"""Sliding-window evaluation on whole volumes at the model grid (the inference engine's `infer.sliding`): Dice
and HD95 from medseg.metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CaseScore:
    """Metrics of one volume; HD95 in mm (a missed organ scores Dice 0 and HD95 = the image diagonal, never None)."""

    case: str
    dice: float
    hd95_mm: float
    kind: str


def predict_volume(net: torch.nn.Module, image01: np.ndarray, roi: tuple[int, int, int], overlap: float,
                   sw_batch_size: int, device: str = "cpu") -> np.ndarray:  # fmt: skip
    """Argmax labels of a [0, 1]-scaled volume, with the inference engine's gaussian sliding window."""
    from medseg.infer.runtime import module_runner
    from medseg.infer.sliding import sliding_window

    image = np.ascontiguousarray(image01, dtype=np.float32)
    channels = int(getattr(net, "out_channels", 2))
    network = module_runner(net, device, sw_batch_size)
    logits = sliding_window(image, network, tuple(roi), channels, batch_size=sw_batch_size, overlap=overlap)
    return logits.argmax(0).astype(np.uint8)


def score(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], case: str, kind: str) -> CaseScore:
    """Dice and HD95 (mm) of binary masks with medseg.metrics (the validation harness's definitions)."""
    from medseg.metrics import organ_metrics

    m = organ_metrics(ref > 0, pred > 0, tuple(float(s) for s in spacing), nsd_tolerance_mm=1.0)
    return CaseScore(case, m.dice, m.hd95_mm, kind)
