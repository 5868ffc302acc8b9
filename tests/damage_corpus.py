"""A generated corpus of damaged studies, each with the exit code medseg must give (see test_robustness_sweep.py).

The base series is 10 real CHAOS CT slices cropped to 128 x 128 (real headers, real HU values), small enough that
40+ variants cost a few MB. Every damage is one a real archive, share or exporter produces.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_SLICES = 10
SIZE = 128


@dataclass(frozen=True)
class Damage:
    """One damaged input: how to make it, the command that reads it, and the exit code medseg must give."""

    name: str
    make: Callable[[Path, Path], Path]  # (base series folder, case folder) -> the input path to pass
    expected: int
    command: str = "convert"  # "convert" or "infer" (infer when the damage only matters for outputs or QC)
    extra: tuple[str, ...] = ()


def make_base(chaos_dicom: Path, out: Path) -> Path:
    """10 consecutive CHAOS slices cropped to the central 128 x 128 pixels, written as a new series."""
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    files = sorted(chaos_dicom.iterdir())[30 : 30 + N_SLICES]
    series = generate_uid()
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array
        r0, c0 = (ds.Rows - SIZE) // 2, (ds.Columns - SIZE) // 2
        crop = np.ascontiguousarray(arr[r0 : r0 + SIZE, c0 : c0 + SIZE])
        dy, dx = (float(v) for v in ds.PixelSpacing)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        pos = np.asarray(ds.ImagePositionPatient, dtype=float) + c0 * dx * iop[:3] + r0 * dy * iop[3:]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.Rows, ds.Columns = SIZE, SIZE
        ds.PixelData = crop.tobytes()
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / f"slice{n:03d}.dcm")
    return out


def _copy(base: Path, case: Path) -> Path:
    shutil.copytree(base, case)
    return case


def _slice(case: Path, k: int = 4) -> Path:
    return sorted(case.glob("slice*.dcm"))[k]


def set_raw(ds: object, keyword: str, value: bytes) -> None:
    """Store a raw, unconverted value (pydicom would refuse to set a malformed one)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = tag_for_keyword(keyword)
    value = value + b" " if len(value) % 2 else value
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), dictionary_VR(tag), len(value), value, 0, False, True)  # type: ignore[attr-defined]


def _edit(k: int | None, edit: Callable[[object], None]) -> Callable[[Path, Path], Path]:
    """Copy the base and apply `edit` to slice k's dataset (every slice when k is None)."""

    def make(base: Path, case: Path) -> Path:
        import pydicom

        _copy(base, case)
        targets = sorted(case.glob("slice*.dcm")) if k is None else [_slice(case, k)]
        for f in targets:
            ds = pydicom.dcmread(f)
            edit(ds)
            ds.save_as(f)
        return case

    return make


def _raw(keyword: str, value: bytes, k: int | None = 4) -> Callable[[Path, Path], Path]:
    return _edit(k, lambda ds: set_raw(ds, keyword, value))


def _attr(keyword: str, value: object, k: int | None = 4) -> Callable[[Path, Path], Path]:
    return _edit(k, lambda ds: setattr(ds, keyword, value))


def _bytes(k: int, change: Callable[[bytes], bytes]) -> Callable[[Path, Path], Path]:
    def make(base: Path, case: Path) -> Path:
        _copy(base, case)
        f = _slice(case, k)
        f.write_bytes(change(f.read_bytes()))
        return case

    return make


def _random_header(data: bytes) -> bytes:
    rng = np.random.default_rng(17)
    noise = rng.integers(0, 256, 600, dtype=np.uint8).tobytes()
    return data[:140] + noise + data[740:]


def _pixels(k: int, change: Callable[[object], None]) -> Callable[[Path, Path], Path]:
    return _edit(k, change)


def _longer_pixels(ds: object) -> None:
    ds.PixelData = ds.PixelData + b"\x00\x00"  # type: ignore[attr-defined]


def _shorter_pixels(ds: object) -> None:
    ds.PixelData = ds.PixelData[:-2]  # type: ignore[attr-defined]


def _declared_8bit(ds: object) -> None:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7  # type: ignore[attr-defined]


def _declared_32bit(ds: object) -> None:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31  # type: ignore[attr-defined]


def _odd_8bit_series(base: Path, case: Path) -> Path:
    """A valid 8-bit series of 127 x 127 pixels: odd length, padded to even as the standard says."""
    import pydicom

    _copy(base, case)
    for f in sorted(case.glob("slice*.dcm")):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array[:127, :127] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        ds.Rows, ds.Columns = 127, 127
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 8
        data = np.clip((hu.astype(np.int32) + 1024) // 8, 0, 255).astype(np.uint8).tobytes()
        ds.PixelData = data + b"\x00"
        ds.save_as(f)
    return case


def _positions_scaled(factor: float) -> Callable[[object], None]:
    def edit(ds: object) -> None:
        ds.ImagePositionPatient = [f"{float(v) * factor:.4f}"[:16] for v in ds.ImagePositionPatient]  # type: ignore[attr-defined]

    return edit


def _no_file_meta(base: Path, case: Path) -> Path:
    """Every slice written without preamble and file meta (implicit VR little endian), as old exporters did."""
    import pydicom
    from pydicom.filewriter import write_dataset

    _copy(base, case)
    for f in sorted(case.glob("slice*.dcm")):
        ds = pydicom.dcmread(f)
        del ds.file_meta
        with open(f, "wb") as fh:
            write_dataset(pydicom.filebase.DicomFileLike(fh), ds)  # type: ignore[attr-defined]
    return case


def _no_file_meta_dataset_only(base: Path, case: Path) -> Path:
    import pydicom

    _copy(base, case)
    for f in sorted(case.glob("slice*.dcm")):
        ds = pydicom.dcmread(f)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.preamble = None
        ds.save_as(f, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return case


def _duplicate_position(base: Path, case: Path) -> Path:
    import pydicom
    from pydicom.uid import generate_uid

    _copy(base, case)
    ds = pydicom.dcmread(_slice(case, 4))
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = bytes(len(ds.PixelData))
    ds.save_as(case / "slice004b.dcm")
    return case


def _missing_slice(base: Path, case: Path) -> Path:
    _copy(base, case)
    _slice(case, 4).unlink()
    return case


def _extra_zero_length(base: Path, case: Path) -> Path:
    _copy(base, case)
    (case / "empty.dcm").write_bytes(b"")
    return case


def _dir_named_like_file(base: Path, case: Path) -> Path:
    _copy(base, case)
    (case / "slice099.dcm").mkdir()
    return case


def _symlink_loop_inside(base: Path, case: Path) -> Path:
    _copy(base, case)
    os.symlink(case / "loop_b", case / "loop_a")
    os.symlink(case / "loop_a", case / "loop_b")
    return case


def _symlinked_folder_loop(base: Path, case: Path) -> Path:
    _copy(base, case)
    os.symlink(case, case / "self")
    return case


def _non_utf8_names(base: Path, case: Path) -> Path:
    _copy(base, case)
    for n, f in enumerate(sorted(case.glob("slice*.dcm"))):
        os.rename(os.fsencode(f), os.fsencode(case) + b"/M\xfcller_" + str(n).encode() + b".dcm")
    return case


def _single(name: str, data: Callable[[Path], bytes]) -> Callable[[Path, Path], Path]:
    def make(base: Path, case: Path) -> Path:
        case.mkdir()
        path = case / name
        path.write_bytes(data(base))
        return path

    return make


def _nifti(spacing: tuple[float, float, float] | None = None, truncate: bool = False) -> Callable[[Path, Path], Path]:
    def make(base: Path, case: Path) -> Path:
        import nibabel as nib

        case.mkdir()
        img = nib.Nifti1Image(np.full((16, 16, 8), -1000, dtype=np.int16), np.diag([*(spacing or (1, 1, 1)), 1]))
        path = case / "ct.nii.gz"
        nib.save(img, path)
        if truncate:
            path.write_bytes(path.read_bytes()[:-40])
        return path

    return make


def _symlink_loop_input(base: Path, case: Path) -> Path:
    case.mkdir()
    os.symlink(case / "b.dcm", case / "a.dcm")
    os.symlink(case / "a.dcm", case / "b.dcm")
    return case / "a.dcm"


def _dir_named_like_nifti(base: Path, case: Path) -> Path:
    (case / "x.nii.gz").mkdir(parents=True)
    return case / "x.nii.gz"


def _empty_folder(base: Path, case: Path) -> Path:
    case.mkdir()
    return case


def _text_files(base: Path, case: Path) -> Path:
    case.mkdir()
    for n in range(3):
        (case / f"notes{n}.txt").write_text("not an image\n")
    return case


def _gzip_dicom(base: Path, case: Path) -> Path:
    case.mkdir()
    path = case / "slice.dcm"
    path.write_bytes(gzip.compress(_first(base).read_bytes()))
    return path


def _first(base: Path) -> Path:
    return sorted(base.glob("slice*.dcm"))[0]


def corpus() -> list[Damage]:
    """Every damaged case with its expected exit code."""
    half = _bytes(4, lambda b: b[: len(b) // 2])
    return [
        Damage("intact_control", _copy, 0),
        Damage("truncated_slice_pixels", half, 3),
        Damage("truncated_slice_header", _bytes(4, lambda b: b[:300]), 3),
        Damage("truncated_last_slice_header", _bytes(N_SLICES - 1, lambda b: b[:300]), 3),
        Damage("random_header_bytes", _bytes(4, _random_header), 3),
        Damage("random_header_bytes_last_slice", _bytes(N_SLICES - 1, _random_header), 3),
        Damage("zero_length_extra_file", _extra_zero_length, 0),
        Damage("zero_length_input", _single("slice.dcm", lambda b: b""), 3),
        Damage("zero_length_slice", _bytes(4, lambda b: b""), 3),
        Damage("directory_named_like_a_file", _dir_named_like_file, 0),
        Damage("directory_named_like_nifti", _dir_named_like_nifti, 3),
        Damage("symlink_loop_in_folder", _symlink_loop_inside, 0),
        Damage("symlink_loop_input", _symlink_loop_input, 3),
        Damage("symlinked_folder_loop", _symlinked_folder_loop, 0),
        Damage("non_utf8_file_names", _non_utf8_names, 0),
        Damage("rescale_slope_zero", _raw("RescaleSlope", b"0"), 3),
        Damage("rescale_slope_zero_last_slice", _raw("RescaleSlope", b"0", N_SLICES - 1), 3),
        Damage("rescale_intercept_nan", _raw("RescaleIntercept", b"NaN"), 3),
        Damage("rescale_intercept_text", _raw("RescaleIntercept", b"abc"), 3),
        Damage("rescale_slope_infinite", _raw("RescaleSlope", b"1e999"), 3),
        Damage("rescale_intercept_empty", _raw("RescaleIntercept", b""), 3),
        Damage("rescale_intercept_missing", _edit(4, lambda ds: delattr(ds, "RescaleIntercept")), 3),
        Damage("pixel_data_two_bytes_long", _pixels(4, _longer_pixels), 3),
        Damage("pixel_data_two_bytes_short", _pixels(4, _shorter_pixels), 3),
        Damage("pixel_data_longer_than_8bit_header", _pixels(4, _declared_8bit), 3),
        Damage("pixel_data_shorter_than_32bit_header", _pixels(4, _declared_32bit), 3),
        Damage("odd_8bit_with_standard_padding", _odd_8bit_series, 0),
        Damage("pixel_spacing_micrometres", _raw("PixelSpacing", b"726\\726", None), 3),
        Damage("pixel_spacing_micrometres_one_slice", _raw("PixelSpacing", b"726\\726"), 3),
        Damage("pixel_spacing_zero", _raw("PixelSpacing", b"0\\0", None), 3),
        Damage("pixel_spacing_decimal_comma", _raw("PixelSpacing", b"0,7\\0,7", None), 3),
        Damage("slice_positions_micrometres", _edit(None, _positions_scaled(1000.0)), 3),
        Damage("slice_positions_nan", _raw("ImagePositionPatient", b"NaN\\0\\0"), 3),
        Damage("orientation_not_unit", _raw("ImageOrientationPatient", b"2\\0\\0\\0\\1\\0", None), 3),
        Damage("rows_differ_one_slice", _attr("Rows", 64), 3),
        Damage("pixel_representation_differs", _attr("PixelRepresentation", 1), 3),
        Damage("number_of_frames_text_on_single_frame", _raw("NumberOfFrames", b"abc"), 0),
        Damage("duplicate_position", _duplicate_position, 3),
        Damage("missing_interior_slice", _missing_slice, 3),
        Damage("no_preamble_no_file_meta", _no_file_meta_dataset_only, 0),
        Damage("random_bytes_input", _single("slice.dcm", lambda b: np.random.default_rng(3).bytes(4096)), 3),
        Damage("gzip_compressed_dicom", _gzip_dicom, 3),
        Damage("empty_folder", _empty_folder, 3),
        Damage("text_files_only", _text_files, 3),
        Damage("nifti_micrometre_spacing", _nifti((726.0, 726.0, 2000.0)), 3),
        Damage("nifti_truncated", _nifti(truncate=True), 3),
        Damage("nifti_zero_length", _single("ct.nii.gz", lambda b: b""), 3),
        Damage("slice_thickness_decimal_comma", _raw("SliceThickness", b"2,5", None), 0, "infer"),
        Damage("charset_empty", _raw("SpecificCharacterSet", b"", None), 0, "infer"),
        Damage("charset_unknown", _raw("SpecificCharacterSet", b"ISO_IR 999", None), 0, "infer"),
        Damage(
            "latin1_name_without_charset",
            _edit(None, _latin1_name_without_charset),
            0,
            "infer",
        ),
        Damage("patient_fields_empty", _edit(None, _empty_patient), 0, "infer"),
        Damage("study_date_malformed", _raw("StudyDate", b"2020-01-01", None), 0, "infer"),
        Damage("modality_mr_refused", _attr("Modality", "MR", None), 5, "infer"),
        Damage("modality_mr_forced", _attr("Modality", "MR", None), 0, "infer", ("--force",)),
        Damage("body_part_head_refused", _attr("BodyPartExamined", "HEAD", None), 5, "infer"),
        Damage("rescale_intercept_text_infer", _raw("RescaleIntercept", b"abc"), 3, "infer"),
    ]


def _empty_patient(ds: object) -> None:
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime"):
        if keyword in ds:  # type: ignore[operator]
            delattr(ds, keyword)
    ds.ReferringPhysicianName = ""  # type: ignore[attr-defined]


def _latin1_name_without_charset(ds: object) -> None:
    if "SpecificCharacterSet" in ds:  # type: ignore[operator]
        delattr(ds, "SpecificCharacterSet")
    set_raw(ds, "PatientName", b"M\xfcller^J\xf6rg")
