"""Sliding-window evaluation on whole volumes at the model grid: Dice and HD95 from medseg.metrics."""

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
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))[None, None].to(device)
    with torch.inference_mode():
        logits = sliding_window_inference(x, roi, sw_batch_size, net, overlap=overlap, mode="gaussian")
    return logits.argmax(1)[0].cpu().numpy().astype(np.uint8)


def score(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], case: str, kind: str) -> CaseScore:
    """Dice and HD95 (mm) of binary masks with medseg.metrics (the validation harness's definitions)."""
    from medseg.metrics import organ_metrics

    m = organ_metrics(ref > 0, pred > 0, tuple(float(s) for s in spacing), nsd_tolerance_mm=1.0)
    return CaseScore(case, m.dice, m.hd95_mm, kind)
