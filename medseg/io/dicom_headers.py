"""Reading DICOM headers once, and the facts about them that grouping and geometry need (what kind of object a
file is lives in `dicom_classify`)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import uid as _uid

DICOMDIR_CLASS = str(_uid.MediaStorageDirectoryStorage)
LABEL_MAP_SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation (2024), not yet in pydicom.uid
NOT_DICOM = "not a DICOM file"
DEFER_SIZE = "16 KB"  # values this large (pixel data, private blobs) are read only when used: scans stay small
ASCII_KEYWORDS = frozenset(
    {
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "FrameOfReferenceUID",
        "SOPClassUID",
        "SOPInstanceUID",
        "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID",
        "Modality",
    }
)
# converted once while the file is read, so a corrupt value fails there (naming the file), not later
PIXEL_KEYWORDS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "SeriesDescription",
)
ENHANCED_IMAGE_CLASSES = frozenset(
    str(u)
    for u in (
        _uid.EnhancedCTImageStorage,
        _uid.EnhancedMRImageStorage,
        _uid.EnhancedPETImageStorage,
        _uid.LegacyConvertedEnhancedCTImageStorage,
        _uid.LegacyConvertedEnhancedMRImageStorage,
        _uid.LegacyConvertedEnhancedPETImageStorage,
    )
)
EXTRA_KEYWORDS = {
    "SliceThickness": "slice_thickness",
    "SpacingBetweenSlices": "spacing_between_slices",
    "BitsAllocated": "bits_allocated",
    "BitsStored": "bits_stored",
    "HighBit": "high_bit",
    "PixelRepresentation": "pixel_representation",
    "PhotometricInterpretation": "photometric_interpretation",
    "BodyPartExamined": "body_part_examined",
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "manufacturer_model_name",
    "KVP": "kvp",
    "ConvolutionKernel": "convolution_kernel",
    "ContrastBolusAgent": "contrast_bolus_agent",
    "PixelPaddingValue": "pixel_padding_value",
    "RescaleType": "rescale_type",
    "SeriesNumber": "series_number",
    "SOPClassUID": "sop_class_uid",
    "PatientPosition": "patient_position",
    "MagneticFieldStrength": "magnetic_field_strength",
}


class HeaderError(Exception):
    """A file could not be read as DICOM; `reason` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_header(path: Path, data: bytes | None = None, check_values: bool = True) -> Any:
    """Parse a DICOM file once, deferring pixel data (read later only for the chosen series).

    With `data` (the file's bytes, already read), it is parsed from memory: deferred values then come from those
    same bytes. pydicom's warnings are not printed; a warning that the file ended early becomes a HeaderError.
    check_values=False leaves the values medseg's readers use unconverted (a caller that converts what it uses).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(_source(path, data), defer_size=DEFER_SIZE)
        except InvalidDicomError:
            ds = _read_forced(_source(path, data))
        except Exception as exc:
            raise HeaderError(f"unreadable DICOM ({type(exc).__name__}; truncated or corrupt?)") from exc
    for w in caught:
        if "end of file" in str(w.message).lower() or "truncated" in str(w.message).lower():
            raise HeaderError(f"truncated DICOM file ({str(w.message).split(' in file ')[0]})")
    if not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "DirectoryRecordSequence")):
        raise HeaderError("truncated or corrupt DICOM file (its data set has no SOP Class or Instance UID)")
    if check_values:
        _convert_used_values(ds)
    _fill_transfer_syntax(ds)
    return ds


def _source(path: Path, data: bytes | None) -> Any:
    """What pydicom reads: the path, or a fresh in-memory stream of the file's bytes."""
    return path if data is None else io.BytesIO(data)


def _fill_transfer_syntax(ds: Any) -> None:
    """A file without file meta (old exporters) gets the transfer syntax pydicom detected while reading it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _convert_used_values(ds: Any) -> None:
    """Convert every value medseg reads later, so a corrupt element is reported against this file now."""
    from pydicom.datadict import tag_for_keyword

    keyword = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for keyword in (*PIXEL_KEYWORDS, *EXTRA_KEYWORDS):
                tag = tag_for_keyword(keyword)
                if tag in ds:
                    ds[tag]
            for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
                for item in ds.get(keyword, None) or ():
                    for elem in item:
                        for sub in elem.value if elem.VR == "SQ" else ():
                            list(sub)
    except Exception as exc:
        raise HeaderError(f"unreadable DICOM header (corrupt {keyword}: {type(exc).__name__})") from exc


def _read_forced(path: Any) -> Any:
    """Read a file without preamble/file meta; accept it only when it looks like an image or object header."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=DEFER_SIZE, force=True)
    except Exception as exc:
        raise HeaderError(NOT_DICOM) from exc
    if not any(k in ds for k in ("SOPClassUID", "ImagePositionPatient", "Modality")):
        raise HeaderError(NOT_DICOM)
    return ds


def raw_text(ds: Any, keyword: str) -> str | None:
    """An ASCII-only value (UI, CS, DS, IS) straight from the file bytes, skipping pydicom's slower conversion."""
    try:
        elem = ds.get_item(keyword, keep_deferred=True)
    except (KeyError, ValueError):
        return None
    value = None if elem is None else elem.value
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, (str, int, float)):
        return str(value).strip()
    return "\\".join(str(v) for v in value)


def text(ds: Any, keyword: str) -> str:
    """A header value as a stripped string ('' when absent or empty); ASCII-only VRs are read raw (fast)."""
    if keyword in ASCII_KEYWORDS:
        return raw_text(ds, keyword) or ""
    value = ds.get(keyword, None)
    if value is None:
        return ""
    return str(value).strip() if not hasattr(value, "value") else str(value.value).strip()


def sop_class(ds: Any) -> str:
    """SOPClassUID, falling back to the file meta's MediaStorageSOPClassUID."""
    uid = text(ds, "SOPClassUID")
    if not uid and getattr(ds, "file_meta", None) is not None:
        uid = text(ds.file_meta, "MediaStorageSOPClassUID")
    return uid


def image_type(ds: Any) -> tuple[str, ...]:
    """ImageType values upper-cased (e.g. ORIGINAL, PRIMARY, AXIAL / LOCALIZER)."""
    value = raw_text(ds, "ImageType")
    return tuple(v.strip().upper() for v in value.split("\\")) if value else ()


def floats(value: Any, n: int) -> np.ndarray | None:
    """A multi-valued DS (list, or backslash-separated text) as a float array of length n; None when malformed."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    parts = value.split("\\") if isinstance(value, str) else list(value)
    try:
        arr = np.asarray([float(v) for v in parts], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def ds_floats(ds: Any, keyword: str, n: int) -> np.ndarray | None:
    """A DS attribute of `ds` (dataset or sequence item) as floats, read raw."""
    return floats(raw_text(ds, keyword), n)


def number_of_frames(ds: Any) -> int:
    """NumberOfFrames (1 when absent; 0 when malformed)."""
    value = ds.get("NumberOfFrames", None)
    if value is None or str(value).strip() == "":
        return 1
    try:
        return int(str(value).strip())
    except ValueError:
        return 0


@dataclass(frozen=True)
class Header:
    """One parsed DICOM file with what grouping needs; `dataset` keeps pixel data deferred."""

    path: Path
    dataset: Any
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    description: str
    sop_class_uid: str
    rows: int
    columns: int
    samples_per_pixel: int
    orientation: np.ndarray | None
    pixel_spacing: np.ndarray | None
    frames: int
    has_pixels: bool

    @classmethod
    def from_dataset(cls, path: Path, ds: Any) -> Header:
        """Collect the grouping facts; enhanced multi-frame files take orientation/spacing from functional groups."""
        orientation = ds_floats(ds, "ImageOrientationPatient", 6)
        spacing = ds_floats(ds, "PixelSpacing", 2)
        if orientation is None or spacing is None:
            shared = ds.get("SharedFunctionalGroupsSequence", None)
            first = ds.get("PerFrameFunctionalGroupsSequence", None)
            for groups in (shared, first):
                if not groups:
                    continue
                item = groups[0]
                if orientation is None and "PlaneOrientationSequence" in item:
                    orientation = ds_floats(item.PlaneOrientationSequence[0], "ImageOrientationPatient", 6)
                if spacing is None and "PixelMeasuresSequence" in item:
                    spacing = ds_floats(item.PixelMeasuresSequence[0], "PixelSpacing", 2)

        def as_int(keyword: str, default: int = 0) -> int:
            try:
                return int(ds.get(keyword, default) or default)
            except (TypeError, ValueError):
                return default

        return cls(
            path=path,
            dataset=ds,
            series_uid=text(ds, "SeriesInstanceUID"),
            study_uid=text(ds, "StudyInstanceUID"),
            frame_of_reference_uid=text(ds, "FrameOfReferenceUID"),
            modality=text(ds, "Modality").upper(),
            description=text(ds, "SeriesDescription"),
            sop_class_uid=sop_class(ds),
            rows=as_int("Rows"),
            columns=as_int("Columns"),
            samples_per_pixel=as_int("SamplesPerPixel", 1),
            orientation=orientation,
            pixel_spacing=spacing,
            frames=number_of_frames(ds),
            has_pixels=any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")),
        )

    @property
    def is_enhanced(self) -> bool:
        """True for enhanced / legacy-converted multi-frame CT, MR or PET."""
        return self.sop_class_uid in ENHANCED_IMAGE_CLASSES or "PerFrameFunctionalGroupsSequence" in self.dataset


def header_extra(ds: Any) -> dict[str, Any]:
    """Non-identifying acquisition facts the inference QC uses, without re-reading headers."""
    extra: dict[str, Any] = {}
    for keyword, name in EXTRA_KEYWORDS.items():
        value = ds.get(keyword, None)
        if value is not None and str(value).strip() != "":
            extra[name] = _plain(value)
    extra["image_type"] = list(image_type(ds))
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is not None:
        extra["transfer_syntax_uid"] = str(tsyntax)
        extra["transfer_syntax"] = getattr(tsyntax, "name", str(tsyntax))
    return extra


def _plain(value: Any) -> Any:
    """pydicom value -> JSON-friendly Python value."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value).strip()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    return str(value)


def __getattr__(name: str) -> Any:
    """Classification names moved to `dicom_classify`; importing them from here keeps working."""
    from medseg.io import dicom_classify

    if name in dicom_classify.__all__:
        return getattr(dicom_classify, name)
    raise AttributeError(name)
