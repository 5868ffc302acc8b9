"""Every metric of one organ in one case, with one rule for empty masks so that no metric is ever NaN.

Definitions: docs/risk/metrics.md. A missed organ (reference present, prediction empty) scores Dice, IoU, NSD,
sensitivity and precision 0 and HD95 = ASSD = the image diagonal; a prediction where the reference is empty scores
the same way; both empty (a correct "absent") scores overlap 1 and distances 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from medseg.errors import ProcessingError
from medseg.metrics.surface import average_symmetric, robust_hausdorff, surface_dice, surface_distances


@dataclass(frozen=True)
class OrganMetrics:
    """One organ in one case; distances in mm, volumes in ml."""

    dice: float
    iou: float
    hd95_mm: float
    assd_mm: float
    nsd: float
    nsd_tolerance_mm: float
    volume_ref_ml: float
    volume_pred_ml: float
    volume_diff_ml: float
    volume_diff_pct: float
    sensitivity: float
    precision: float
    fn_rate: float
    outcome: str  # "hit" | "miss" | "false_positive" | "true_negative"

    def to_json(self) -> dict[str, float | str]:
        """The metrics as a flat dict."""
        return asdict(self)


def image_diagonal_mm(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Length of the image's diagonal in mm: the distance a missed organ is charged."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _outcome(n_ref: int, n_pred: int) -> str:
    if n_ref and n_pred:
        return "hit"
    if n_ref:
        return "miss"
    return "false_positive" if n_pred else "true_negative"


def organ_metrics(
    ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float], nsd_tolerance_mm: float
) -> OrganMetrics:
    """All metrics of a predicted mask against the reference mask (same grid, spacing in mm per array axis)."""
    ref, pred = np.asarray(ref, bool), np.asarray(pred, bool)
    if ref.shape != pred.shape:
        raise ProcessingError(f"reference {ref.shape} and prediction {pred.shape} are not on one grid")
    tp = int(np.count_nonzero(ref & pred))
    n_ref, n_pred = int(np.count_nonzero(ref)), int(np.count_nonzero(pred))
    fp, fn = n_pred - tp, n_ref - tp
    voxel_ml = float(np.prod(spacing)) / 1000.0
    outcome = _outcome(n_ref, n_pred)
    vol_ref, vol_pred = n_ref * voxel_ml, n_pred * voxel_ml
    if outcome == "true_negative":
        dice = iou = nsd = sens = prec = 1.0
        hd95 = assd = 0.0
    elif outcome == "hit":
        sd = surface_distances(ref, pred, spacing)
        dice, iou = 2 * tp / (n_ref + n_pred), tp / (tp + fp + fn)
        hd95, assd, nsd = robust_hausdorff(sd, 95.0), average_symmetric(sd), surface_dice(sd, nsd_tolerance_mm)
        sens, prec = tp / n_ref, tp / n_pred
    else:
        dice = iou = nsd = 0.0
        hd95 = assd = image_diagonal_mm(ref.shape, spacing)
        sens, prec = (0.0, 0.0) if outcome == "miss" else (1.0, 0.0)
    diff_pct = 100.0 * (vol_pred - vol_ref) / vol_ref if n_ref else (0.0 if not n_pred else 100.0)
    return OrganMetrics(
        dice=dice, iou=iou, hd95_mm=hd95, assd_mm=assd, nsd=nsd, nsd_tolerance_mm=nsd_tolerance_mm,
        volume_ref_ml=vol_ref, volume_pred_ml=vol_pred, volume_diff_ml=vol_pred - vol_ref,
        volume_diff_pct=diff_pct, sensitivity=sens, precision=prec, fn_rate=1.0 - sens if n_ref else 0.0,
        outcome=outcome,
    )  # fmt: skip
