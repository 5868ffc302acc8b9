"""DICOM Segmentation (highdicom) of a label map on a DICOM series' grid, referencing the source slices.

Frames are matched to source slices by position, not by list order (highdicom #330, TotalSegmentator #598): the
source headers are re-read, each one's ImagePositionPatient/ImageOrientationPatient is checked against the slice
of the label map it is paired with, and the writer refuses to write when any does not match within 0.01 mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medseg.errors import ProcessingError
from medseg.io import Volume
from medseg.io.atomic import atomic_path

CODES_FILE = Path(__file__).with_name("data") / "segment_codes.yaml"
POSITION_TOL_MM = 0.01


@dataclass(frozen=True)
class SegAlgorithm:
    """Who made the segmentation: written into the SEG's segment and equipment attributes."""

    name: str
    version: str
    software_version: str
    manufacturer: str = "medseg"


class SegUnavailable(ProcessingError):
    """A SEG cannot be written for this input (e.g. the source series has no UIDs); the reason is user-facing."""


@cache
def segment_codes() -> dict[str, Any]:
    """The structure-code table (data file, loaded once)."""
    return yaml.safe_load(CODES_FILE.read_text())


def _code(entry: dict[str, str]) -> Any:
    from pydicom.sr.coding import Code

    return Code(entry["value"], entry["scheme"], entry["meaning"])


def seg_blockers(volume: Volume) -> str | None:
    """Why this volume cannot get a PACS-acceptable SEG, or None when it can."""
    meta = volume.meta
    if meta.source_format != "dicom" or not meta.source_files:
        return "input is not DICOM"
    if meta.extra.get("n_frames_per_file", 1) != 1 or len(meta.source_files) != volume.shape[2]:
        return "multi-frame source images are not supported for SEG output yet"
    if not (meta.study_instance_uid and meta.series_instance_uid):
        return "source series has empty Study/Series Instance UIDs, so a SEG could not reference it"
    return None


def _source_headers(volume: Volume) -> list[Any]:
    """Source datasets (headers only) in slice order, each checked to sit where the label map's slice k sits."""
    import pydicom

    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.meta.source_files]
    geom = volume.geometry
    expected = geom.index_to_world(np.array([[0, 0, k] for k in range(geom.shape[2])]))
    row_col = np.concatenate([geom.direction_matrix[:, 0], geom.direction_matrix[:, 1]])
    for k, ds in enumerate(datasets):
        if not str(getattr(ds, "SOPInstanceUID", "")).strip():
            raise SegUnavailable("a source slice has an empty SOP Instance UID", path=volume.meta.source_files[k])
        pos = np.asarray(ds.ImagePositionPatient, dtype=float)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if np.abs(pos - expected[k]).max() > POSITION_TOL_MM or np.abs(iop - row_col).max() > 1e-4:
            raise ProcessingError(
                f"source slice {k} is not where the label map's slice {k} is ({pos.tolist()} vs "
                f"{expected[k].round(3).tolist()}); refusing to write a misplaced SEG",
                path=volume.meta.source_files[k],
                hint="Report this as a bug.",
            )
    return datasets


def build_seg(labels: np.ndarray, volume: Volume, names: dict[int, str], algorithm: SegAlgorithm) -> Any:
    """A highdicom BINARY Segmentation of `labels` (label-map style, [i, j, k]) referencing the source series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    reason = seg_blockers(volume)
    if reason:
        raise SegUnavailable(reason)
    table = segment_codes()
    unknown = sorted(n for n in names.values() if n not in table["structures"])
    if unknown:
        raise SegUnavailable(f"no SNOMED CT code for {unknown} in {CODES_FILE.name}")
    ident = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=names[n],
            segmented_property_category=_code(table["category"]),
            segmented_property_type=_code(table["structures"][names[n]]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident,
        )
        for n in range(1, max(names) + 1)
    ]
    sources = _source_headers(volume)
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.software_version,
        device_serial_number="none",
        series_description=f"{algorithm.name} {algorithm.version} segmentation"[:64],
        content_label="SEGMENTATION",
        content_description=f"Automatic segmentation by {algorithm.name} {algorithm.version}"[:64],
        omit_empty_frames=True,
    )


def write_seg(
    labels: np.ndarray,
    volume: Volume,
    names: dict[int, str],
    algorithm: SegAlgorithm,
    path: Path,
    overwrite: bool = False,
) -> Path:
    """Build the SEG and write it atomically to `path`."""
    if not labels.any():
        raise SegUnavailable("the segmentation is empty; a DICOM SEG needs at least one segmented frame")
    seg = build_seg(labels, volume, names, algorithm)
    with atomic_path(path, overwrite) as tmp:
        seg.save_as(tmp)
    return path
