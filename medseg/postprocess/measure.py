"""Where a mask is and how big: bounding box, centroid and per-organ statistics, computed one way for the pipeline
(model-space box, summary.json) and the preview (the slices it shows)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.io import Geometry, Volume


def axis_profiles(mask: np.ndarray) -> list[np.ndarray]:
    """Voxel counts of `mask` per index along each axis (no coordinate list is ever built)."""
    return [mask.sum(axis=tuple(a for a in range(mask.ndim) if a != axis), dtype=np.int64) for axis in range(mask.ndim)]


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True voxel, grown by `margin` and clipped; None when empty."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def centroid_index(mask: np.ndarray) -> np.ndarray | None:
    """Mean voxel index of `mask` (float, per axis); None when empty."""
    profiles = axis_profiles(mask)
    total = int(profiles[0].sum())
    if total == 0:
        return None
    return np.array([float((p * np.arange(p.size)).sum()) / total for p in profiles])


def world_extent(mask: np.ndarray, start: list[int], geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The LPS box (min, max mm) of the voxel centres set in `mask`, a crop of the grid starting at index `start`.

    On an axis-aligned grid two opposite corners of the index box give it exactly; on an oblique grid (a rotated
    acquisition) they do not, so every voxel is mapped."""
    d = geometry.direction_matrix
    if (np.abs(d) > 1e-9).sum(axis=0).max() == 1:
        last = [a + n - 1 for a, n in zip(start, mask.shape, strict=True)]
        corners = geometry.index_to_world(np.array([start, last]))
    else:
        corners = geometry.index_to_world(np.argwhere(mask) + np.asarray(start))
    return corners.min(0), corners.max(0)


def organ_stats(
    labels: np.ndarray, label: int, volume: Volume, within: tuple[slice, ...] | None = None
) -> dict[str, Any]:
    """Volume, voxel count, mean/std of the image inside (HU for CT), bounding box and centroid of one label.

    `within`: a box known to hold every voxel of the label (the prediction's labelled region); the figures are the
    same, computed on the box instead of the whole grid."""
    offset = np.zeros(labels.ndim, dtype=int) if within is None else np.array([s.start for s in within])
    region = labels if within is None else labels[within]
    mask = region == label
    count = int(mask.sum())
    stats: dict[str, Any] = {"label": label, "voxel_count": count, "volume_ml": count * volume.geometry.voxel_volume_ml}
    box = bounding_box(mask)
    centre = centroid_index(mask)
    if box is None or centre is None:
        empty = ("mean_hu", "std_hu", "bbox_index", "bbox_lps_mm", "centroid_lps_mm")
        return stats | dict.fromkeys(empty)
    start = [int(s.start + o) for s, o in zip(box, offset, strict=True)]
    stop = [int(s.stop + o) for s, o in zip(box, offset, strict=True)]
    extent = world_extent(mask[box], start, volume.geometry)
    image = volume.array if within is None else volume.array[within]
    values = image[box][mask[box]].astype(np.float64)
    centroid = volume.geometry.index_to_world(centre + offset)[0]
    return stats | {
        "mean_hu": float(values.mean()),
        "std_hu": float(values.std()),
        "bbox_index": {"start": start, "stop": stop},
        "bbox_lps_mm": {"min": extent[0].round(2).tolist(), "max": extent[1].round(2).tolist()},
        "centroid_lps_mm": centroid.round(2).tolist(),
    }
