"""Cheap augmentations for how real archives store CT: HU clipping, a field of view cut at the dome or the pelvis,
and sharp reconstruction kernels. Applied in HU to synthetic and real patches alike, before windowing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.train.synth.fields import gaussian_blur

AIR_HU = -1024.0


@dataclass(frozen=True)
class RobustParams:
    """Probabilities and ranges (from the training config's `augment.robust`)."""

    p_clip: float = 0.0
    clips: tuple[tuple[float, float], ...] = ((-1024.0, 1024.0),)
    p_fov_cut: float = 0.0
    fov_keep: tuple[float, float] = (0.35, 0.9)
    p_sharpen: float = 0.0
    sharpen_amount: tuple[float, float] = (0.3, 1.5)


def archive_clip(hu: np.ndarray, rng: np.random.Generator, clips: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Clip intensities as an archive or a windowed export would (e.g. -1024..1024, or a soft-tissue window)."""
    lo, hi = clips[rng.integers(len(clips))]
    return np.clip(hu, lo, hi)


def fov_cut(hu: np.ndarray, label: np.ndarray, rng: np.random.Generator,
            keep: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Blank the patch above (dome) or below (pelvis) a random axial plane: outside the scan = air, background."""
    n = hu.shape[2]
    cut = round(n * rng.uniform(*keep))
    hu, label = hu.copy(), label.copy()
    side = slice(cut, n) if rng.random() < 0.5 else slice(0, n - cut)
    hu[:, :, side] = AIR_HU
    label[:, :, side] = 0
    return hu, label


def sharpen(hu: np.ndarray, rng: np.random.Generator, amount: tuple[float, float]) -> np.ndarray:
    """Unsharp masking: the edge overshoot and amplified noise of a sharp (bone/lung) reconstruction kernel."""
    sigma = float(rng.uniform(0.6, 1.2))
    blurred = gaussian_blur(hu, (sigma, sigma, sigma * 0.5))
    return (hu + rng.uniform(*amount) * (hu - blurred)).astype(np.float32)


def archive_augment(hu: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                    p: RobustParams) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Apply each augmentation with its probability (no random draw at all when every probability is zero)."""
    if not (p.p_sharpen or p.p_fov_cut or p.p_clip):
        return hu, label
    u = rng.random(3)
    if u[0] < p.p_sharpen:
        hu = sharpen(hu, rng, p.sharpen_amount)
    if u[1] < p.p_fov_cut:
        hu, label = fov_cut(hu, label, rng, p.fov_keep)
    if u[2] < p.p_clip:
        hu = archive_clip(hu, rng, p.clips)
    return hu, label
