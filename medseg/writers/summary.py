"""summary.json: the per-series record of what was found, with what, how it was checked, and how long it took."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io import Volume
from medseg.io.atomic import atomic_write_text

SCHEMA = "medseg.infer.summary/1"


def organ_stats(labels: np.ndarray, label: int, volume: Volume) -> dict[str, Any]:
    """Volume, voxel count, mean/std of the image inside (HU for CT), bounding box and centroid of one label."""
    mask = labels == label
    count = int(mask.sum())
    stats: dict[str, Any] = {"label": label, "voxel_count": count, "volume_ml": count * volume.geometry.voxel_volume_ml}
    if count == 0:
        return stats | {
            "mean_hu": None,
            "std_hu": None,
            "bbox_index": None,
            "bbox_lps_mm": None,
            "centroid_lps_mm": None,
        }
    profiles = [mask.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64) for axis in range(3)]
    start = [int(np.flatnonzero(p)[0]) for p in profiles]
    stop = [int(np.flatnonzero(p)[-1]) + 1 for p in profiles]
    corners = volume.geometry.index_to_world(np.array([start, [s - 1 for s in stop]]))
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    values = volume.array[box][mask[box]].astype(np.float64)
    mean_index = [float((p * np.arange(p.size)).sum() / count) for p in profiles]
    centroid = volume.geometry.index_to_world(np.array(mean_index))[0]
    return stats | {
        "mean_hu": float(values.mean()),
        "std_hu": float(values.std()),
        "bbox_index": {"start": start, "stop": stop},
        "bbox_lps_mm": {"min": corners.min(0).round(2).tolist(), "max": corners.max(0).round(2).tolist()},
        "centroid_lps_mm": centroid.round(2).tolist(),
    }


def write_summary(summary: dict[str, Any], path: Path, overwrite: bool = False) -> Path:
    """Write the summary as indented JSON, atomically, with its schema tag first."""
    atomic_write_text(path, json.dumps({"schema": SCHEMA, **summary}, indent=2, default=str) + "\n", overwrite)
    return path
