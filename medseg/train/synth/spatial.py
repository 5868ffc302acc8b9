"""Random affine + elastic resampling of a region into a training patch (torch grid_sample; never flips left/right)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SpatialParams:
    """Ranges of the spatial augmentation (from the training config); angles in degrees, elastic in voxels."""

    rotate_deg: tuple[float, float, float] = (8.0, 8.0, 15.0)
    scale: tuple[float, float] = (0.85, 1.2)
    anisotropy: float = 0.08
    elastic_vox: tuple[float, float] = (0.0, 3.0)
    elastic_grid: int = 5


def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sampling_grid(out_shape: tuple[int, int, int], in_shape: tuple[int, ...], rng: np.random.Generator,
                  params: SpatialParams | None) -> torch.Tensor:  # fmt: skip
    """A grid_sample grid mapping the output patch (centred) into the input region, randomly deformed."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in out_shape], indexing="ij"), -1)
    centred = idx - torch.tensor([(n - 1) / 2 for n in out_shape])
    if params is not None:
        s = rng.uniform(*params.scale) * (1 + rng.uniform(-params.anisotropy, params.anisotropy, size=3))
        rot = _rotation(rng.uniform(-1, 1, size=3) * np.asarray(params.rotate_deg))
        m = torch.from_numpy((rot @ np.diag(1.0 / s)).astype(np.float32))
        centred = centred @ m.T
        amp = rng.uniform(*params.elastic_vox)
        if amp > 0:
            g = params.elastic_grid
            disp = torch.from_numpy(rng.standard_normal((1, 3, g, g, g)).astype(np.float32)) * amp
            disp = F.interpolate(disp, size=out_shape, mode="trilinear", align_corners=True)[0]
            centred = centred + disp.permute(1, 2, 3, 0)
    pos = centred + torch.tensor([(n - 1) / 2 for n in in_shape[:3]])
    norm = pos / torch.tensor([max(n - 1, 1) for n in in_shape[:3]]) * 2 - 1
    return norm.flip(-1)[None]


def warp(vol: np.ndarray, grid: torch.Tensor, mode: str, fill: float) -> np.ndarray:
    """Resample `vol` with `grid` ("nearest" for labels/tissues, "bilinear" for images); outside -> `fill`."""
    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None] - fill
    out = F.grid_sample(t, grid, mode=mode, padding_mode="zeros", align_corners=True)[0, 0] + fill
    return out.numpy()
