"""Encode one de-identified dataset, and name it only from its new UIDs."""

from __future__ import annotations

import io
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medseg.deid.identity import new_file_meta
from medseg.deid.pixels import little_endian
from medseg.deid.values import value_of


def source_transfer_syntax(original: Dataset) -> str:
    """The input's transfer syntax, or the one its encoding implies when the file has no meta group."""
    meta = getattr(original, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if ts:
        return ts
    implicit = getattr(original, "original_encoding", (True, True))[0]
    return ImplicitVRLittleEndian if implicit in (True, None) else ExplicitVRLittleEndian


def output_transfer_syntax(original: Dataset, pixels_rewritten: bool) -> str:
    """The output's transfer syntax: native little endian when pixels were rewritten, else the input's own."""
    ts = source_transfer_syntax(original)
    if pixels_rewritten or ts in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        return ExplicitVRLittleEndian
    return ts


def convert_values(ds: Dataset) -> None:
    """Convert every element still raw (kept byte for byte) before the output's byte order differs from the input's."""
    for _ in ds.iterall():
        pass


def to_little_endian(out: Dataset) -> None:
    """Rewrite big endian native pixel data as little endian (pydicom does not swap bytes on save)."""
    if "PixelData" in out:
        arr = little_endian(out.pixel_array)
        out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.set_pixel_data(arr, str(out.PhotometricInterpretation), int(out.BitsStored), generate_instance_uid=False)
    out.set_original_encoding(False, True, out.original_character_set)


def relative_name(out: Dataset) -> Path:
    """study/series/instance.dcm from the de-identified UIDs (no PHI: they are keyed hashes)."""
    study, series, instance = (
        str(value_of(out, k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    return Path(study) / series / f"{instance}.dcm"


def encode_dataset(out: Dataset, original: Dataset, pixels_rewritten: bool) -> bytes:
    """`out` as DICOM file bytes with a fresh file meta group (written and hashed by the runner)."""
    ts = output_transfer_syntax(original, pixels_rewritten)
    out.file_meta = new_file_meta(out, original, ts)
    out.preamble = b"\x00" * 128  # never the input's: 128 free bytes that may carry anything (PS3.10 7.1)
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
