"""SynthSeg-style synthetic CT: (image in HU, liver label) pairs generated on the fly from prepared label maps.

Billot et al., "SynthSeg", Medical Image Analysis 2023: random anatomy deformation and random appearance force the
network to learn shape; here the appearance follows CT priors per contrast phase most of the time, and is fully
random for a fraction of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.train.synth.anatomy import PAD, AnatomyParams, Region, build_tissues
from medseg.train.synth.appearance import AppearanceParams, render
from medseg.train.synth.prepare import AnatomyCase
from medseg.train.synth.spatial import SpatialParams, sampling_grid, warp
from medseg.train.synth.tissues import tissue_table


@dataclass
class SynthSample:
    """One generated pair: `image` in HU (float32), `label` (uint8, organ i -> i + 1), and what was sampled."""

    image: np.ndarray
    label: np.ndarray
    phase: str
    case: str


def cut_region(case: AnatomyCase, lo: np.ndarray, size: tuple[int, int, int]) -> Region:
    """The box [lo, lo+size) of `case`, padded outside the case (outside = not in the scan's field of view)."""
    shape = np.asarray(case.classes.shape)
    lo = np.asarray(lo, int)
    hi = lo + np.asarray(size)
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, shape, strict=True))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo, strict=True))

    def cut(arr: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(size, fill, dtype=arr.dtype)
        out[dst] = arr[src]
        return out

    zi = np.clip(np.arange(lo[2], hi[2]), 0, shape[2] - 1)
    xi = np.clip(np.arange(lo[0], hi[0]), 0, shape[0] - 1)
    yi = np.clip(np.arange(lo[1], hi[1]), 0, shape[1] - 1)
    return Region(
        classes=cut(case.classes, 0), fov=cut(case.fov, False), hull_dist=cut(case.hull_dist, 1e4),
        spine=case.spine[zi], dome=case.dome[np.ix_(xi, yi)], origin=lo, spacing=case.spacing,
    )  # fmt: skip


def organ_label(tissues: np.ndarray, organs: tuple[str, ...] = ("liver",)) -> np.ndarray:
    """The training label of a tissue map: organs[i] -> i + 1, background 0 (default: the binary liver label)."""
    return tissue_table().label_lut(organs)[tissues]


def pick_centre(case: AnatomyCase, rng: np.random.Generator, positive: bool) -> np.ndarray:
    """A patch centre: a random liver voxel if `positive`, else a random voxel in the scanned body region."""
    if positive:
        pts = np.argwhere(case.classes == tissue_table().ids["liver"])
    else:
        pts = np.argwhere(case.fov & (case.hull_dist < 40.0))
    if len(pts) == 0:
        pts = np.argwhere(case.fov)
    return pts[rng.integers(len(pts))]


def synth_patch(case: AnatomyCase, rng: np.random.Generator, patch: tuple[int, int, int], positive: bool,
                spatial: SpatialParams, appearance: AppearanceParams, organs: tuple[str, ...] = ("liver",),
                anatomy: AnatomyParams = AnatomyParams()) -> SynthSample:  # fmt: skip
    """A randomly deformed and rendered patch of `case` around a positive (liver) or negative centre."""
    centre = pick_centre(case, rng, positive) + rng.integers(-patch[0] // 6, patch[0] // 6 + 1, size=3)
    size = tuple(int(np.ceil(p * 1.45)) for p in patch)
    reg = cut_region(case, centre - np.asarray(size) // 2, size)
    tissues = build_tissues(reg, rng, anatomy)
    grid = sampling_grid(patch, size, rng, spatial)
    warped = warp(tissues.astype(np.float32), grid, "nearest", float(PAD)).round().astype(np.int16)
    image, phase = render(warped, rng, appearance)
    return SynthSample(image, organ_label(warped, organs), phase, case.name)


def synth_volume(case: AnatomyCase, rng: np.random.Generator, appearance: AppearanceParams,
                 organs: tuple[str, ...] = ("liver",),
                 anatomy: AnatomyParams = AnatomyParams()) -> SynthSample:  # fmt: skip
    """The whole prepared case rendered without deformation (fixed-seed synthetic validation volumes)."""
    reg = cut_region(case, np.zeros(3, int), case.classes.shape)
    tissues = build_tissues(reg, rng, anatomy)
    image, phase = render(tissues.astype(np.int16), rng, appearance)
    return SynthSample(image, organ_label(tissues, organs), phase, case.name)
