"""Sliding-window evaluation on whole volumes at the model grid (the inference engine's `infer.sliding`): Dice
and HD95 with MONAI metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CaseScore:
    """Metrics of one volume; HD95 in mm (None when prediction or reference is empty)."""

    case: str
    dice: float
    hd95_mm: float | None
    kind: str


def predict_volume(net: torch.nn.Module, image01: np.ndarray, roi: tuple[int, int, int], overlap: float,
                   sw_batch_size: int, device: str = "cpu") -> np.ndarray:  # fmt: skip
    """Argmax labels of a [0, 1]-scaled volume, with the inference engine's gaussian sliding window."""
    from medseg.infer.sliding import sliding_window

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    image = np.ascontiguousarray(image01, dtype=np.float32)
    channels = int(getattr(net, "out_channels", 2))
    logits = sliding_window(image, predict, tuple(roi), channels, batch_size=sw_batch_size, overlap=overlap)
    return logits.argmax(0).astype(np.uint8)


def score(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], case: str, kind: str) -> CaseScore:
    """Dice and HD95 (mm) of binary masks with MONAI's metric functions."""
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p = torch.from_numpy((pred > 0).astype(np.float32))[None, None]
    r = torch.from_numpy((ref > 0).astype(np.float32))[None, None]
    dice = float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])
    hd = None
    if p.any() and r.any():
        hd = float(
            compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(spacing))[0, 0]
        )
    return CaseScore(case, dice, hd, kind)
