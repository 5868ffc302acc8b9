"""The engine's commonest actions done on a still-raw element's bytes (raw copier only): Z empties it, D puts the
dummy value, U and the safe list's UIDs map every UID; the result is a new raw element with the bytes pydicom
would write for the converted, changed element, so the value is never converted nor re-encoded.

Anything else (sequences, UN, ambiguous or numeric VRs, undefined lengths, empty or odd UID lists, C and K)
returns None and the engine converts the element as usual. `tests/test_deid_rawcopy.py` checks these bytes
against the full pydicom path on every corpus file and on generated data sets.
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement

from medseg.deid.keyed import KeyedMapper

UNDEFINED = 0xFFFFFFFF
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV"})
STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"})


def changed(
    raw: RawDataElement, vr: str, kind: str, action: str, dummy: str, mapper: KeyedMapper
) -> RawDataElement | None:
    """The element after the engine's (kind, action) from its bytes; `vr` is the engine's VR of it and `dummy`
    its dummy text for D. None when the engine must convert it."""
    if raw.VR == "UN" or raw.value is None or raw.length == UNDEFINED or not raw.is_little_endian or vr == "SQ":
        return None
    if kind == "row" and action == "Z":
        value = b""
    elif vr == "UI" and (kind == "safe-ui" or action in ("U", "D")):
        value = _mapped_uids(raw.value, mapper)
    elif (kind == "dummy" or action == "D") and vr in BINARY_VRS:
        value = b"\0\0"
    elif (kind == "dummy" or action == "D") and vr in STRING_VRS:
        value = _padded(dummy.encode("ascii"), b" ")
    else:
        return None
    if value is None:
        return None
    return RawDataElement(raw.tag, raw.VR, len(value), value, raw.value_tell, raw.is_implicit_VR, True)


def _mapped_uids(value: bytes, mapper: KeyedMapper) -> bytes | None:
    """Each UID of the value mapped, as pydicom reads (trailing NUL and spaces dropped, each UID stripped) and
    writes (joined by backslashes, NUL-padded) them; None when no UID is left (the engine keeps it as it is)."""
    uids = [u.strip() for u in value.decode("latin-1").rstrip("\0 ").split("\\")]
    mapped = [mapper.uid(u) for u in uids if u]
    if not mapped:
        return None
    return _padded("\\".join(mapped).encode("ascii"), b"\0")


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value
