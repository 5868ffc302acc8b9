"""Encoding for the raw copier: a raw element's header and value bytes written directly (what pydicom's
write_data_element writes for it, without its per-element buffers), anything else by pydicom; the file meta group
as dcmwrite writes it with enforce_file_format."""

from __future__ import annotations

import struct

from pydicom import __version_info__
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import tag_in_exception
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
LONG_VRS = frozenset(str(v) for v in EXPLICIT_VR_LENGTH_32)
_HEADER = struct.Struct("<HHL")
_SEQUENCE_DELIMITER = _HEADER.pack(0xFFFE, 0xE0DD, 0)


def file_meta_bytes(meta: Dataset) -> bytes:
    """The file meta group as dcmwrite writes it with enforce_file_format (version, class, instance, transfer
    syntax, pydicom's implementation UID and version name), encoded directly."""
    elements = [
        (0x0001, b"OB", b"\x00\x01"),
        (0x0002, b"UI", _uid(meta.MediaStorageSOPClassUID)),
        (0x0003, b"UI", _uid(meta.MediaStorageSOPInstanceUID)),
        (0x0010, b"UI", _uid(meta.TransferSyntaxUID)),
        (0x0012, b"UI", _uid(PYDICOM_IMPLEMENTATION_UID)),
        (0x0013, b"SH", _even(f"PYDICOM {'.'.join(__version_info__)}".encode("ascii"), b" ")),
    ]
    body = b"".join(
        struct.pack("<HH2sHL", 2, e, vr, 0, len(v)) + v if vr == b"OB" else struct.pack("<HH2sH", 2, e, vr, len(v)) + v
        for e, vr, v in elements
    )
    return struct.pack("<HH2sHL", 2, 0, b"UL", 4, len(body)) + body


def _uid(value: object) -> bytes:
    return _even(str(value).encode("ascii"), b"\x00")


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def encoded_element(elem: object, implicit: bool, charset: object) -> bytes:
    """One element's encoding: a raw element's header and value bytes directly, anything else by pydicom."""
    header = _raw_header(elem, implicit) if isinstance(elem, RawDataElement) else None
    if header is None:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = implicit, True
        with tag_in_exception(elem.tag):  # type: ignore[attr-defined]
            write_data_element(fp, elem, charset)  # type: ignore[arg-type]
        return fp.getvalue()
    value = elem.value  # type: ignore[attr-defined]
    return header + value + (_SEQUENCE_DELIMITER if elem.length == UNDEFINED else b"")  # type: ignore[attr-defined]


def _raw_header(raw: RawDataElement, implicit: bool) -> bytes | None:
    """The header pydicom's write_data_element writes for a raw element; None where it would do more (check
    encapsulated Pixel Data, turn a long short-VR value into UN)."""
    if raw.value is None or (raw.length == UNDEFINED and raw.tag == PIXEL_DATA):
        return None
    length = UNDEFINED if raw.length == UNDEFINED else len(raw.value)
    group, element = raw.tag >> 16, raw.tag & 0xFFFF
    if implicit:
        return _HEADER.pack(group, element, length)
    if raw.VR is None or len(raw.VR) != 2:
        return None
    if raw.VR in LONG_VRS:
        return struct.pack("<HH2sHL", group, element, raw.VR.encode("ascii"), 0, length)
    if length > 0xFFFF:
        return None
    return struct.pack("<HH2sH", group, element, raw.VR.encode("ascii"), length)
