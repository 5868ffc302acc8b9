"""Read one DICOM series (classic single-frame stack or enhanced multi-frame file) into a Volume."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InvalidInputError, MedsegError
from medseg.io.dicom_geometry import FramePlane, Stack, build_stack
from medseg.io.dicom_headers import Header, HeaderError, ds_floats, header_extra, raw_text, read_header, text
from medseg.io.dicom_pixels import (
    Rescale,
    decode,
    decode_into,
    fill_padding,
    padding_mask,
    rescale_stack,
    stored_dtype_and_range,
)
from medseg.io.series import SeriesInfo
from medseg.io.volume import SourceSlice, Volume, VolumeMeta


def read_dicom_series(source: SeriesInfo | Sequence[Path] | Path) -> Volume:
    """Read the files of one series (a SeriesInfo, a list of files, or one enhanced multi-frame file)."""
    files = (
        list(source.files) if isinstance(source, SeriesInfo) else [source] if isinstance(source, Path) else list(source)
    )
    if not files:
        raise InvalidInputError("no files given for the DICOM series", hint="Pass a folder or the series' files.")
    headers = []
    for path in files:
        try:
            headers.append(Header.from_dataset(Path(path), read_header(Path(path))))
        except HeaderError as exc:
            raise InvalidInputError(exc.reason, path=path, hint="Remove it or re-export the series.") from exc
    where = files[0].parent if len(files) > 1 else files[0]
    return volume_from_headers(headers, where)


def volume_from_headers(headers: list[Header], where: Path, notes: Sequence[str] = ()) -> Volume:
    """Build the Volume from already-parsed headers (pixel data still deferred); pydicom warnings are muted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _volume_from_headers(headers, where, notes)
        except MedsegError:
            raise
        except Exception as exc:  # a corrupt value pydicom could not convert
            raise InvalidInputError(
                f"unreadable DICOM data ({type(exc).__name__}: {str(exc)[:160]})",
                path=where,
                hint="A file of the series is corrupt; re-export the series.",
            ) from exc


def _is_multiframe(headers: list[Header]) -> bool:
    return len(headers) == 1 and (headers[0].frames > 1 or headers[0].is_enhanced)


def _classic_stack(headers: list[Header], where: Path) -> Stack:
    """Check a single-frame series' headers and order its slices (no pixel data is read)."""
    for h in headers:
        if h.frames > 1:
            raise InvalidInputError(
                "a multi-frame file is mixed with other files in one series",
                path=h.path,
                hint="Read the multi-frame file on its own.",
            )
    _check_uniform(headers, where)
    stack = build_stack([_plane(h) for h in headers], (headers[0].rows, headers[0].columns), where)
    _check_unique_instances(headers)  # after the grid: two images at one position are a duplicate position first
    return stack


def stack_problem(headers: list[Header], where: Path) -> str | None:
    """Why these headers would not make a volume (missing slice, tilt...), or None; reads no pixel data."""
    try:
        if _is_multiframe(headers):
            _multiframe_stack(headers[0])
        else:
            _classic_stack(headers, where)
    except InvalidInputError as exc:
        return exc.message
    return None


def _volume_from_headers(headers: list[Header], where: Path, notes: Sequence[str]) -> Volume:
    if _is_multiframe(headers):
        return _read_multiframe(headers[0], notes)
    stack = _classic_stack(headers, where)
    ordered = [headers[i] for i in stack.order]
    rescales = [Rescale.from_item(h.dataset, where=h.path) for h in ordered]
    stored_dtype, stored_range = stored_dtype_and_range(ordered[0].dataset)
    stored = np.empty((len(ordered), ordered[0].rows, ordered[0].columns), dtype=stored_dtype)
    for k, h in enumerate(ordered):
        decode_into(h.dataset, h.path, stored[k])
    padding = padding_mask(ordered[0].dataset, stored)
    out, dtype = rescale_stack(stored, rescales, stored_range)
    if padding is not None and (note := fill_padding(out, padding)) is not None:
        notes = [*notes, note]
    slices = tuple(_source_slice(h) for h in ordered)
    return _volume(out, stack, ordered[0].dataset, [h.path for h in ordered], rescales, dtype, notes, slices)


def _source_slice(h: Header) -> SourceSlice:
    """The slice's UIDs and plane as written in its file (raw text: no value conversion, nothing re-read)."""
    ds = h.dataset
    return SourceSlice(h.sop_class_uid, text(ds, "SOPInstanceUID"), raw_text(ds, "ImagePositionPatient") or "",
                       raw_text(ds, "ImageOrientationPatient") or "")  # fmt: skip


def _check_uniform(headers: list[Header], where: Path) -> None:
    ref = headers[0]
    for h in headers:
        if not h.has_pixels:
            raise InvalidInputError("file has no pixel data", path=h.path, hint="Remove it from the series folder.")
        if (h.rows, h.columns) != (ref.rows, ref.columns):
            raise InvalidInputError(
                f"image sizes differ within the series: {ref.path.name} is {ref.rows}x{ref.columns}, "
                f"{h.path.name} is {h.rows}x{h.columns}",
                path=where,
                hint="Pick one series with --series (see `medseg series`).",
            )
        if h.samples_per_pixel != 1:
            raise InvalidInputError("colour image, not a greyscale volume", path=h.path)
        for keyword in ("BitsAllocated", "PixelRepresentation"):
            if h.dataset.get(keyword) != ref.dataset.get(keyword):
                raise InvalidInputError(f"{keyword} differs within the series", path=h.path)


def _check_unique_instances(headers: list[Header]) -> None:
    """Two different files of the series under one SOPInstanceUID (byte-identical copies were dropped before): a PACS
    keeps one of them, so a SEG frame referencing that UID would point at the wrong image. Refused, naming both."""
    seen: dict[str, Path] = {}
    for h in headers:
        uid = text(h.dataset, "SOPInstanceUID")
        if not uid:
            continue
        if uid in seen:
            raise InvalidInputError(
                f"{seen[uid].name} and {h.path.name} are different images with the same SOPInstanceUID",
                path=h.path,
                hint="Export the series again from the PACS or scanner; each image needs its own instance UID.",
            )
        seen[uid] = h.path


def _plane(h: Header) -> FramePlane:
    position = ds_floats(h.dataset, "ImagePositionPatient", 3)
    if position is None or h.orientation is None or h.pixel_spacing is None:
        raise InvalidInputError(
            "missing or malformed ImagePositionPatient/ImageOrientationPatient/PixelSpacing",
            path=h.path,
            hint="The image has no patient geometry; it cannot be placed in 3D.",
        )
    return FramePlane(h.path, None, position, h.orientation, h.pixel_spacing, _thickness(h.dataset))


def _thickness(item: Any) -> float | None:
    try:
        value = item.get("SliceThickness", None)
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _group_item(ds: Any, frame: int, sequence: str) -> Any | None:
    """The first item of a functional-group macro for one frame (per-frame first, then shared)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if per_frame and frame < len(per_frame) and sequence in per_frame[frame]:
        return per_frame[frame][sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence", None)
    if shared and sequence in shared[0]:
        return shared[0][sequence][0]
    return None


def _multiframe_stack(h: Header) -> tuple[Stack, list[Rescale]]:
    """Geometry and per-frame rescale of an enhanced / legacy-converted multi-frame file, in slice order."""
    ds = h.dataset
    if h.frames < 1:
        raise InvalidInputError("malformed NumberOfFrames", path=h.path, hint="The header is corrupt.")
    if h.samples_per_pixel != 1:
        raise InvalidInputError("colour image, not a greyscale volume", path=h.path)
    planes, rescales = [], []
    base_rescale = Rescale.from_item(ds, where=h.path)
    for f in range(h.frames):
        pos_item = _group_item(ds, f, "PlanePositionSequence")
        ori_item = _group_item(ds, f, "PlaneOrientationSequence")
        pix_item = _group_item(ds, f, "PixelMeasuresSequence")
        position = ds_floats(pos_item, "ImagePositionPatient", 3) if pos_item else None
        orientation = ds_floats(ori_item, "ImageOrientationPatient", 6) if ori_item else None
        spacing = ds_floats(pix_item, "PixelSpacing", 2) if pix_item else None
        if position is None or orientation is None or spacing is None:
            raise InvalidInputError(
                f"frame {f + 1} has no plane position/orientation/pixel measures",
                path=h.path,
                hint="Only multi-frame images with patient geometry (enhanced CT/MR/PET) can be read as volumes.",
            )
        planes.append(FramePlane(h.path, f, position, orientation, spacing, _thickness(pix_item)))
        transform = _group_item(ds, f, "PixelValueTransformationSequence")
        rescale = Rescale.from_item(transform, base_rescale, f"{h.path} frame {f + 1}") if transform else base_rescale
        rescales.append(rescale)
    stack = build_stack(planes, (h.rows, h.columns), h.path)
    return stack, [rescales[i] for i in stack.order]


def _read_multiframe(h: Header, notes: Sequence[str]) -> Volume:
    """Enhanced / legacy-converted multi-frame CT, MR or PET: geometry and rescale from the functional groups."""
    stack, rescales = _multiframe_stack(h)
    stored_frames = decode(h.dataset, h.path)[list(stack.order)]
    padding = padding_mask(h.dataset, stored_frames)
    out, dtype = rescale_stack(stored_frames, rescales)
    if padding is not None and (note := fill_padding(out, padding)) is not None:
        notes = [*notes, note]
    return _volume(out, stack, h.dataset, [h.path], rescales, dtype, notes)


def _volume(
    out: np.ndarray,
    stack: Stack,
    ds: Any,
    files: list[Path],
    rescales: list[Rescale],
    dtype: np.dtype,
    notes: Sequence[str],
    slices: tuple[SourceSlice, ...] = (),
) -> Volume:
    """Wrap the (k, row, col) pixel block as Volume [i, j, k] with its meta."""
    extra = header_extra(ds)
    if stack.thickness is not None:
        extra.setdefault("slice_thickness", stack.thickness)
    slopes = {r.slope for r in rescales}
    intercepts = {r.intercept for r in rescales}
    extra.update(
        rescale_slope=rescales[0].slope,
        rescale_intercept=rescales[0].intercept,
        rescale_varies=len(slopes) > 1 or len(intercepts) > 1,
        output_dtype=str(dtype),
        slice_spacing=stack.geometry.spacing[2],
        n_frames_per_file=out.shape[0] if len(files) == 1 else 1,
    )
    meta = VolumeMeta(
        modality=text(ds, "Modality").upper() or None,
        series_instance_uid=text(ds, "SeriesInstanceUID") or None,
        study_instance_uid=text(ds, "StudyInstanceUID") or None,
        frame_of_reference_uid=text(ds, "FrameOfReferenceUID") or None,
        series_description=text(ds, "SeriesDescription") or None,
        source_format="dicom",
        source_files=tuple(files),
        notes=tuple(notes) + stack.notes,
        extra=extra,
        source_slices=slices,
    )
    return Volume(out.transpose(2, 1, 0), stack.geometry, meta)
