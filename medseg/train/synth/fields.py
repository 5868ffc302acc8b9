"""Cheap random fields: smooth noise by upsampling coarse white noise (texture, bias and shape noise)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def smooth_noise(shape: tuple[int, ...], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, roughly unit-SD smooth noise with correlation length `scale` voxels (2D or 3D)."""
    coarse = tuple(max(2, int(np.ceil(s / max(scale, 1.0))) + 2) for s in shape)
    base = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    up = F.interpolate(base, size=shape, mode=mode, align_corners=True)[0, 0].numpy()
    sd = float(up.std()) or 1.0
    return (up - up.mean()) / sd


def gaussian_blur(vol: np.ndarray, sigma: tuple[float, float, float]) -> np.ndarray:
    """Separable Gaussian blur (sigma in voxels per axis) with torch conv, faster than scipy on large volumes."""
    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None]
    for axis, s in enumerate(sigma):
        if s < 0.2:
            continue
        r = max(1, int(np.ceil(3 * s)))
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / s) ** 2)
        k = (k / k.sum()).view(1, 1, *[len(x) if a == axis else 1 for a in range(3)])
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        t = F.conv3d(F.pad(t, pad, mode="replicate"), k)
    return t[0, 0].numpy()


def resample_axis_thick(vol: np.ndarray, factor: tuple[float, float, float]) -> np.ndarray:
    """Simulate coarser acquisition: area-downsample by `factor` per axis, then linear upsample to the same shape."""
    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None]
    small = tuple(max(2, round(s / f)) for s, f in zip(vol.shape, factor, strict=True))
    t = F.interpolate(t, size=small, mode="area")
    return F.interpolate(t, size=vol.shape, mode="trilinear", align_corners=False)[0, 0].numpy()
