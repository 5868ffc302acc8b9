"""Surface distances weighted by surface-element area: the algorithm of DeepMind's `surface-distance`.

Each 2x2x2 voxel neighbourhood on the border carries a surface element whose area comes from a table of normals
(data/neighbour_code_to_normals.json, copied from the reference, Apache-2.0); distances are Euclidean in mm from
each element of one surface to the nearest border voxel of the other (scipy's exact distance transform).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.errors import ProcessingError

TABLE = Path(__file__).with_name("data") / "neighbour_code_to_normals.json"
KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
FULL = 0b11111111


@cache
def _normals() -> tuple[np.ndarray, ...]:
    """The 256 lists of normals, each as an (n, 3) array, read once."""
    return tuple(np.asarray(n, dtype=float) for n in json.loads(TABLE.read_text())["normals"])


def surface_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm² of the surface inside each of the 256 neighbourhood codes at this voxel spacing."""
    scale = np.array([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]])
    return np.array([float(np.linalg.norm(n * scale, axis=1).sum()) for n in _normals()])


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from each surface element of one mask to the other surface, sorted, with element areas (mm²)."""

    ref_to_pred: np.ndarray
    ref_areas: np.ndarray
    pred_to_ref: np.ndarray
    pred_areas: np.ndarray


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    idx = np.nonzero(mask)
    if len(idx[0]) == 0:
        return None
    return np.array([i.min() for i in idx]), np.array([i.max() for i in idx])


def _crop(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The box lo..hi plus one empty voxel after it on each axis (so a border at the box edge is closed)."""
    out = np.zeros(tuple(hi - lo + 2), np.uint8)
    out[:-1, :-1, :-1] = mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    return out


def _sorted(distances: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((areas, distances))
    return distances[order], areas[order]


def surface_distances(ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float]) -> SurfaceDistances:
    """Both directed sets of surface distances of two 3-D boolean masks on the same grid."""
    if ref.shape != pred.shape or ref.ndim != 3 or len(spacing) != 3:
        raise ProcessingError(f"masks {ref.shape} and {pred.shape} with spacing {spacing} are not one 3-D grid")
    box = _bbox(ref | pred)
    empty = np.array([])
    if box is None:
        return SurfaceDistances(empty, empty, empty, empty)
    table = surface_area_table(tuple(float(s) for s in spacing))
    codes, borders, dist = [], [], []
    for mask in (ref, pred):
        code = ndimage.correlate(_crop(mask, *box), KERNEL, mode="constant", cval=0)
        border = (code != 0) & (code != FULL)
        codes.append(code)
        borders.append(border)
        dist.append(ndimage.distance_transform_edt(~border, sampling=spacing) if border.any() else None)
    out = []
    for mine, other in ((0, 1), (1, 0)):
        d = dist[other][borders[mine]] if dist[other] is not None else np.full(int(borders[mine].sum()), np.inf)
        out.extend(_sorted(d, table[codes[mine][borders[mine]]]))
    return SurfaceDistances(*out)


def directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """The area-weighted `percent` percentile of one directed distance set (inf when the set is empty)."""
    if len(distances) == 0:
        return float("inf")
    cumulative = np.cumsum(areas) / np.sum(areas)
    idx = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(idx, len(distances) - 1)])


def robust_hausdorff(sd: SurfaceDistances, percent: float = 95.0) -> float:
    """The larger of the two directed area-weighted percentiles (mm)."""
    return max(
        directed_percentile(sd.ref_to_pred, sd.ref_areas, percent),
        directed_percentile(sd.pred_to_ref, sd.pred_areas, percent),
    )


def average_symmetric(sd: SurfaceDistances) -> float:
    """Area-weighted mean of all distances of both surfaces to the other (mm)."""
    total = float(np.sum(sd.ref_areas) + np.sum(sd.pred_areas))
    return float(np.sum(sd.ref_to_pred * sd.ref_areas) + np.sum(sd.pred_to_ref * sd.pred_areas)) / total


def surface_dice(sd: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalised surface Dice: the share of both surfaces' area within `tolerance_mm` of the other surface."""
    near = np.sum(sd.ref_areas[sd.ref_to_pred <= tolerance_mm]) + np.sum(sd.pred_areas[sd.pred_to_ref <= tolerance_mm])
    return float(near / (np.sum(sd.ref_areas) + np.sum(sd.pred_areas)))
