"""Intensity normalisation: clip HU to the model's window and scale to [0, 1] (MONAI ScaleIntensityRange, clip=True)."""

from __future__ import annotations

import numpy as np


def hu_window(array: np.ndarray, a_min: float, a_max: float) -> np.ndarray:
    """Clip HU to [a_min, a_max] and scale linearly to [0, 1], in float32 (the one HU window: inference and training;
    "window" alone means a sliding-window tile in `infer.sliding`)."""
    out = np.asarray(array, dtype=np.float32)
    if out is array:
        out = out.copy()
    np.clip(out, a_min, a_max, out=out)
    out -= np.float32(a_min)
    out *= np.float32(1.0 / (a_max - a_min))
    return out


window = hu_window  # older name, kept for existing callers
