"""DICOM Segmentation (highdicom) of a label map on a DICOM series' grid, referencing the source slices.

Frames are matched to source slices by position, not by list order (highdicom #330, TotalSegmentator #598): the
source headers are re-read, each one's ImagePositionPatient/ImageOrientationPatient is checked against the slice
of the label map it is paired with, and the writer refuses to write when any does not match within 0.01 mm. For a
multi-frame (enhanced) source, each frame's plane position picks the label-map slice that goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from medseg.cache import cache_dir
from medseg.errors import ProcessingError
from medseg.io import Volume
from medseg.io.atomic import atomic_path
from medseg.io.dicom_geometry import ORIENTATION_TOL, on_grid_tolerance_mm
from medseg.writers.seg_source import normalise_source
from medseg.writers.seg_tables import install_module_table, memoise_multiframe_check
from medseg.yamltext import load_yaml

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
    return load_yaml(CODES_FILE.read_text())


def _code(entry: dict[str, str]) -> Any:
    from pydicom.sr.coding import Code

    return Code(entry["value"], entry["scheme"], entry["meaning"])


def seg_blockers(volume: Volume) -> str | None:
    """Why this volume cannot get a PACS-acceptable SEG, or None when it can."""
    meta = volume.meta
    if meta.source_format != "dicom" or not meta.source_files:
        return "input is not DICOM"
    multiframe = len(meta.source_files) == 1 and meta.extra.get("n_frames_per_file", 1) == volume.shape[2] > 1
    if not multiframe and len(meta.source_files) != volume.shape[2]:
        return "the source files do not map one-to-one onto the slices"
    if not (meta.study_instance_uid and meta.series_instance_uid):
        return "source series has empty Study/Series Instance UIDs, so a SEG could not reference it"
    if not meta.frame_of_reference_uid:
        return "source has no Frame of Reference UID, which a SEG needs to place its frames"
    return None


def _read_source(path: Path, notes: list[str]) -> Any:
    """A source header (no pixels) with the values a SEG copies normalised (see `seg_source`), in memory only."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    notes.extend(n for n in normalise_source(ds) if n not in notes)
    return ds


def _check_plane(volume: Volume, k: int, pos: np.ndarray, iop: np.ndarray, where: Path) -> None:
    """Refuse unless the frame at `pos` with orientation `iop` is the label map's slice k."""
    geom = volume.geometry
    expected = geom.index_to_world(np.array([[0, 0, k]]))[0]
    row_col = np.concatenate([geom.direction_matrix[:, 0], geom.direction_matrix[:, 1]])
    position_tol = max(POSITION_TOL_MM, on_grid_tolerance_mm(float(geom.spacing[2])))
    if np.abs(pos - expected).max() > position_tol or np.abs(iop - row_col).max() > ORIENTATION_TOL:
        raise ProcessingError(
            f"source frame for slice {k} is not where the label map's slice {k} is ({pos.tolist()} vs "
            f"{expected.round(3).tolist()}); refusing to write a misplaced SEG",
            path=where,
            hint="Report this as a bug.",
        )


def _source_headers(volume: Volume, notes: list[str]) -> list[Any]:
    """Single-frame sources (headers only) in slice order, each checked to sit where the label map's slice k sits.

    When the reader kept each slice's UIDs and plane (`VolumeMeta.source_slices`), only slice 0 is re-read (highdicom
    copies patient, study and pixel measures from the first source only) and the others are small datasets holding
    what highdicom reads of them: the written SEG is the same, without re-reading and normalising every header."""
    if volume.meta.source_slices:
        datasets = _slim_sources(volume, notes)
    else:
        datasets = [_read_source(f, notes) for f in volume.meta.source_files]
    _slice_thickness(datasets[0], volume, notes)
    for k, ds in enumerate(datasets):
        where = volume.meta.source_files[k]
        if not str(getattr(ds, "SOPInstanceUID", "")).strip():
            raise SegUnavailable("a source slice has an empty SOP Instance UID", path=where)
        pos = np.asarray(ds.ImagePositionPatient, dtype=float)
        own = (np.array(volume.meta.source_slices[k].orientation.split("\\"), dtype=float)
               if volume.meta.source_slices else np.asarray(ds.ImageOrientationPatient, dtype=float))  # fmt: skip
        _check_plane(volume, k, pos, own, where)
    return datasets


def _slice_thickness(first: Any, volume: Volume, notes: list[str]) -> None:
    """SliceThickness is Type 2 in a CT image (may be absent or empty) but the SEG's pixel measures need it, and
    highdicom copies it from the first source: absent, highdicom cannot build the SEG; empty, the SEG fails dciodvfy.
    The series' slice spacing is then given (the SEG's own voxels are that thick), with a note."""
    value = first.get("SliceThickness", None)
    if value is not None and str(value).strip():
        return
    first.SliceThickness = f"{volume.spacing[2]:.6g}"
    note = f"source SliceThickness is absent or empty; the SEG gives the slice spacing, {first.SliceThickness} mm"
    if note not in notes:
        notes.append(note)


def _slim_sources(volume: Volume, notes: list[str]) -> list[Any]:
    """Slice 0's full (normalised) header, then per slice the attributes highdicom reads of later sources."""
    from pydicom import config
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    first = _read_source(volume.meta.source_files[0], notes)
    if str(getattr(first, "SOPInstanceUID", "")).strip() != volume.meta.source_slices[0].sop_instance_uid:
        raise ProcessingError("the first source file changed since it was read", path=volume.meta.source_files[0],
                              hint="Do not modify the input while medseg runs; rerun.")  # fmt: skip
    shared = [first[k] for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns",
                                 "Modality") if k in first]  # fmt: skip
    datasets = [first]
    # one orientation for the stack, slice 0's: the reader accepted cosines that differ within ORIENTATION_TOL (each
    # slice is checked against the label map's own below), and highdicom refuses sources that are not all equal
    orientation = first.ImageOrientationPatient
    for ref in volume.meta.source_slices[1:]:  # values already read once from these files: not validated again
        ds = Dataset()
        for elem in shared:
            ds.add(elem)
        for tag, vr, value in ((0x00080016, "UI", ref.sop_class_uid), (0x00080018, "UI", ref.sop_instance_uid),
                               (0x00200032, "DS", ref.position), (0x00200037, "DS", orientation)):  # fmt: skip
            ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
        datasets.append(ds)
    return datasets


def _frame_slices(volume: Volume, ds: Any) -> list[int]:
    """For each frame of a multi-frame source, the label-map slice at its position (checked, never assumed)."""
    where = volume.meta.source_files[0]
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    slices = []
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        plane = item if "PlaneOrientationSequence" in item else shared
        pos = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        iop = np.asarray(plane.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
        k = round(float(volume.geometry.world_to_index(pos)[0][2]))
        if not 0 <= k < volume.shape[2]:
            raise ProcessingError(f"frame {f} of the source lies outside the label map", path=where)
        _check_plane(volume, k, pos, iop, where)
        slices.append(k)
    return slices


def k_major_frames(labels: np.ndarray, block: int = 64) -> np.ndarray:
    """`labels[i, j, k]` as uint8 frames `[k, j, i]` (`medseg.io.layout.reversed_axes`: cubes holding no label
    are skipped)."""
    from medseg.io.layout import reversed_axes

    return reversed_axes(labels, np.uint8, block)


def build_seg(
    labels: np.ndarray,
    volume: Volume,
    names: dict[int, str],
    algorithm: SegAlgorithm,
    series_note: str | None = None,
    notes: list[str] | None = None,
) -> Any:
    """A highdicom BINARY Segmentation of `labels` (label-map style, [i, j, k]) referencing the source series.

    `series_note` (e.g. 'FORCED modality') leads the SeriesDescription; normalised source values are appended to
    `notes`. A highdicom failure on the source's values becomes SegUnavailable: the label map is kept."""
    notes = [] if notes is None else notes
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
    frames = k_major_frames(labels)
    if len(volume.meta.source_files) == 1 and volume.shape[2] > 1:
        sources = [_read_source(volume.meta.source_files[0], notes)]
        frames = frames[_frame_slices(volume, sources[0])]
    else:
        sources = _source_headers(volume, notes)
    series = _series_description(f"{algorithm.name} {algorithm.version} segmentation", series_note)
    try:
        return _segmentation(hd, sources, frames, descriptions, algorithm, series)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        detail = f"{type(exc).__name__}: {str(exc)[:200]}"
        raise SegUnavailable(f"highdicom could not build the SEG from this source ({detail})") from exc


def _series_description(description: str, note: str | None) -> str:
    """The note (e.g. 'FORCED modality,body_part') first, so it survives the 64-character limit."""
    return (f"{note} {description}" if note else description)[:64]


_PREWARM: list[Any] = []


def prewarm_in_background() -> None:
    """Import highdicom and load its IOD tables in a daemon thread, once per process (about 1 s of a SEG's time).

    Meant to be started while the network runs (OpenVINO works outside the GIL), so that the SEG stage does not pay
    the import on a one-study process. The real write imports the same modules and waits for a half-done import;
    an error here is ignored (the write reports it)."""
    import threading

    if _PREWARM:
        return
    thread = threading.Thread(target=_prewarm, name="medseg-seg-prewarm", daemon=True)
    _PREWARM.append(thread)
    thread.start()


def _prewarm() -> None:
    try:
        import highdicom  # noqa: F401
        from highdicom._standard_utils import get_iod_module_map, get_sop_class_iod_map
        from pydicom.sr.codedict import codes

        get_sop_class_iod_map(), get_iod_module_map()
        _speed_ups()
        _ = codes.cid7162.ArtificialIntelligence
    except Exception:  # a warm-up only: write_seg raises whatever is really wrong
        return


def _speed_ups() -> None:
    """highdicom's tables the fast way (`writers.seg_tables`: same answers, same SEG)."""
    install_module_table(cache_dir())
    memoise_multiframe_check()


def _segmentation(
    hd: Any, sources: list[Any], frames: np.ndarray, descriptions: list[Any], algorithm: SegAlgorithm, series: str
) -> Any:
    _speed_ups()
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
        series_description=series,
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
    series_note: str | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Build the SEG and write it atomically to `path` (see `build_seg` for `series_note` and `notes`)."""
    if not labels.any():
        raise SegUnavailable("the segmentation is empty; a DICOM SEG needs at least one segmented frame")
    seg = build_seg(labels, volume, names, algorithm, series_note, notes)
    with atomic_path(path, overwrite) as tmp:
        seg.save_as(tmp)
    return path
