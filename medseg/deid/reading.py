"""Read one input file for de-identification, or say why it is skipped (not DICOM, truncated) or dropped."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from medseg.io.dicom_headers import HeaderError, read_header

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
UNDEFINED_LENGTH = 0xFFFFFFFF
DICOMDIR_NOTE = "DICOMDIR dropped: it indexes the original files by patient values and names; rebuild it on the output"


class ReadProblem(Exception):
    """The file is not de-identified: `status` skipped (unreadable) or dropped (DICOMDIR), with a reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _pixel_bytes_short(ds: Dataset) -> bool:
    """True when native pixel data is shorter than rows x columns x samples x bits x frames says."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if "PixelData" not in ds or (ts is not None and ts.is_compressed):
        return False
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1))
        expected = native_size(
            ds.Rows, ds.Columns, samples, frames, ds.BitsAllocated, ds.get("PhotometricInterpretation")
        )
    except (AttributeError, TypeError, ValueError):
        return False
    return len(ds.PixelData) < expected


def native_size(rows: int, columns: int, samples: int, frames: int, bits: int, photometric: object) -> int:
    """Bytes of native pixel data: rows x columns x samples x bits x frames / 8, two thirds of that for
    YBR_FULL_422 (its chroma is subsampled 2:1 horizontally: 2 samples' worth per pixel instead of 3)."""
    size = rows * columns * samples * frames * bits // 8
    return size * 2 // 3 if str(photometric or "").strip() == "YBR_FULL_422" and samples == 3 else size


def _element_cut_short(ds: Dataset) -> bool:
    """True when a top-level element holds fewer bytes than its defined length says: the file was cut inside it
    (pydicom reads such files without a warning; the element holding the end of the file is always top-level)."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or not isinstance(raw.value, bytes):
            continue
        if raw.length != UNDEFINED_LENGTH and len(raw.value) < raw.length:
            return True
    return False


def read_input(path: Path, data: bytes) -> Dataset:
    """The dataset parsed from the file's bytes `data` (values converted only when used: a kept element is copied
    byte for byte); ReadProblem for DICOMDIR, non-DICOM and truncated files."""
    if path.name.upper() == "DICOMDIR":
        raise ReadProblem("dropped", DICOMDIR_NOTE)
    try:
        ds = read_header(path, data, check_values=False)  # the engine converts what it changes
    except HeaderError as exc:
        raise ReadProblem("skipped", exc.reason) from exc
    except Exception as exc:
        raise ReadProblem("skipped", f"unreadable DICOM element ({type(exc).__name__})") from exc
    meta = getattr(ds, "file_meta", None)
    if str(ds.get("SOPClassUID", "")) == DICOMDIR_CLASS or (
        meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_CLASS
    ):
        raise ReadProblem("dropped", DICOMDIR_NOTE)
    if len(ds) == 0:
        raise ReadProblem("skipped", "empty or truncated DICOM file (no elements)")
    if _pixel_bytes_short(ds):
        raise ReadProblem("skipped", "truncated pixel data")
    if _element_cut_short(ds):
        raise ReadProblem("skipped", "truncated DICOM file (an element ends before its declared length)")
    return ds


def corrupt_element(data: bytes) -> str | None:
    """Why the file cannot be parsed element by element (every value converted), or None when it can."""
    try:
        list(read_header(Path("input"), data).iterall())
    except Exception as exc:
        return f"unreadable DICOM element ({type(exc).__name__})"
    return None
