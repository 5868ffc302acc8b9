"""The header path's raw copier: parse a file's top level into raw elements that remember where their bytes are;
de-identify sequences from their bytes; write by copying every element the engine left untouched (Pixel Data too).

`parse` returns None (the caller then takes the full pydicom path, `reading.read_input`) for: no preamble or file
meta, deflated, big-endian, private or unknown transfer syntaxes, a command group, a data set encoded otherwise than
its transfer syntax says, unknown explicit VRs, undefined lengths other than sequences and encapsulated Pixel Data,
repeated tags, anything cut short, DICOMDIR, no SOP UID, short native Pixel Data. `sequence` returns None (the
engine converts and walks it) for implicit-VR items in an explicit-VR file, an item's own character set and
LEVEL_OPTIONS; `encode` returns None (`writer.encode_dataset`) when the output's encoding or charset changed.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import config
from pydicom.charset import default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from medseg.deid.engine import (
    NESTED_PIXELS,
    PIXEL_TAGS,
    FileContext,
    clean_level,
    dictionary_vr,
    element_decision,
    raw_changed,
    valid_kept_value,
)
from medseg.deid.identity import new_file_meta
from medseg.deid.rawencode import encoded_element, file_meta_bytes
from medseg.deid.reading import DICOMDIR_CLASS, native_size
from medseg.deid.values import value_of
from medseg.deid.writer import output_transfer_syntax, source_transfer_syntax

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
KNOWN_VRS = frozenset(str(v) for v in VR if len(str(v)) == 2)
LONG_VRS = frozenset(str(v) for v in EXPLICIT_VR_LENGTH_32)
_HEADER = struct.Struct("<HHL")
_ITEM_END_BYTES = struct.pack("<HH", 0xFFFE, 0xE00D)
_ITEM_DELIMITER = _HEADER.pack(0xFFFE, 0xE00D, 0)
# options whose rules look across a whole level (date pairs shifted together, private blocks and their
# creators): sequences are then walked by the engine itself
LEVEL_OPTIONS = frozenset({"retain-dates-shifted", "retain-safe-private"})
_SHORT_LENGTH = struct.Struct("<H")
_LONG_LENGTH = struct.Struct("<L")


class _Unusual(Exception):
    """A structure left to pydicom (or, inside a sequence, something the engine would change)."""


@dataclass(frozen=True)
class RawFile:
    """A parsed input: the data set of raw top-level elements the engine works on, the file's bytes, and for
    each top-level tag its raw element with the start and end of its encoding in those bytes."""

    dataset: FileDataset
    data: bytes
    spans: dict[BaseTag, tuple[RawDataElement, int, int]]
    implicit: bool


def _header(data: bytes, pos: int, end: int, implicit: bool) -> tuple[int, str | None, int, int]:
    """Tag, explicit VR (None when implicit or an item tag), value length and value start of the element at pos."""
    if pos + 8 > end:
        raise _Unusual
    group, element, length = _HEADER.unpack_from(data, pos)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:
        return tag, None, length, pos + 8
    vr = data[pos + 4 : pos + 6].decode("latin-1")
    if vr not in KNOWN_VRS:
        raise _Unusual
    if vr in LONG_VRS:
        if pos + 12 > end:
            raise _Unusual
        return tag, vr, _LONG_LENGTH.unpack_from(data, pos + 8)[0], pos + 12
    return tag, vr, _SHORT_LENGTH.unpack_from(data, pos + 6)[0], pos + 8


def _looks_implicit(data: bytes, pos: int) -> bool:
    """pydicom's test of an item's or data set's first element: its VR bytes are not two capital letters."""
    return not (pos + 6 <= len(data) and 0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B)


def _undefined_end(data: bytes, pos: int, end: int, implicit: bool, tag: int, vr: str | None) -> tuple[int, int]:
    """(value end, element end after the sequence delimiter) of an undefined-length value starting at pos."""
    pixels = tag == PIXEL_DATA
    if not pixels and (vr or dictionary_vr(tag)) != "SQ":
        raise _Unusual
    while True:
        item, _, length, start = _header(data, pos, end, True)
        if item == SEQUENCE_END:
            return pos, start
        if item != ITEM or (pixels and length == UNDEFINED):
            raise _Unusual
        pos = _item_end(data, start, end, implicit) if length == UNDEFINED else start + length
        if pos > end:
            raise _Unusual


def _item_end(data: bytes, pos: int, end: int, implicit: bool) -> int:
    """Position after the delimiter of an undefined-length item whose content starts at pos."""
    implicit = implicit or _looks_implicit(data, pos)
    while True:
        tag, vr, length, start = _header(data, pos, end, implicit)
        if tag == ITEM_END:
            return start
        pos = _undefined_end(data, start, end, implicit, tag, vr)[1] if length == UNDEFINED else start + length
        if pos > end:
            raise _Unusual


def _top_level(data: bytes, pos: int, implicit: bool) -> dict[BaseTag, tuple[RawDataElement, int, int]]:
    spans: dict[BaseTag, tuple[RawDataElement, int, int]] = {}
    end = len(data)
    while pos < end:
        tag, vr, length, start = _header(data, pos, end, implicit)
        if tag >> 16 in (0x0000, 0x0002, 0xFFFE) or tag in spans:
            raise _Unusual
        if length == UNDEFINED:
            value_end, element_end = _undefined_end(data, start, end, implicit, tag, vr)
        else:
            value_end = element_end = start + length
            if value_end > end:
                raise _Unusual  # cut inside the element: the full path reports the file as truncated
        key = BaseTag(tag)
        raw = RawDataElement(key, vr, length, data[start:value_end], start, implicit, True)
        spans[key] = (raw, pos, element_end)
        pos = element_end
    return spans


def _transfer_syntax(meta: Dataset) -> bool | None:
    """True for implicit VR, False for explicit VR little endian; None for what the full path must handle."""
    ts = meta.get("TransferSyntaxUID")
    if ts is None or ts not in AllTransferSyntaxes or ts in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        return None
    return ts == ImplicitVRLittleEndian


def parse(path: Path, data: bytes) -> RawFile | None:
    """The file's top level as raw elements with their byte ranges, or None when the full path must read it."""
    if path.name.upper() == "DICOMDIR" or len(data) < 140 or data[128:132] != b"DICM":
        return None
    fp = io.BytesIO(data)
    try:
        preamble = read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:
        return None
    implicit = _transfer_syntax(meta)
    start = fp.tell()
    if implicit is None or start + 8 > len(data) or _looks_implicit(data, start) != implicit:
        return None
    try:
        spans = _top_level(data, start, implicit)
    except _Unusual:
        return None
    ds = FileDataset(fp, Dataset({tag: span[0] for tag, span in spans.items()}), preamble, meta, implicit, True)
    ds.set_original_encoding(implicit, True, ds._character_set)
    if not _readable(ds, spans, meta):
        return None
    return RawFile(ds, data, spans, implicit)


def _readable(ds: FileDataset, spans: dict, meta: Dataset) -> bool:
    """read_input's checks, made the same way (the same elements converted): a SOP object, not a DICOMDIR, whole
    native pixel data."""
    if not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "DirectoryRecordSequence")):
        return False
    if str(value_of(ds, "SOPClassUID", "")) == DICOMDIR_CLASS or str(meta.get("MediaStorageSOPClassUID", "")) == (
        DICOMDIR_CLASS
    ):
        return False
    pixels = spans.get(BaseTag(PIXEL_DATA))
    if pixels is None or UID(str(meta.TransferSyntaxUID)).is_compressed:
        return True
    try:
        rows, columns, bits = (_us(ds, spans, k) for k in ("Rows", "Columns", "BitsAllocated"))
        frames = int(value_of(ds, "NumberOfFrames", 1) or 1)  # type: ignore[arg-type]
        samples = int(_us(ds, spans, "SamplesPerPixel", 1))  # type: ignore[arg-type]
        photometric = value_of(ds, "PhotometricInterpretation", "")
        expected = native_size(rows, columns, samples, frames, bits, photometric)  # type: ignore[arg-type]
    except (AttributeError, TypeError, ValueError):
        return True
    return len(pixels[0].value) >= expected


def _us(ds: FileDataset, spans: dict, keyword: str, default: int | None = None) -> int | None:
    """A US value read from its two bytes (converted by pydicom when it is not plain US)."""
    span = spans.get(BaseTag(tag_for_keyword(keyword)))
    if span is None:
        return default
    raw = span[0]
    if raw.VR in ("US", None) and raw.length == 2:
        return _SHORT_LENGTH.unpack(raw.value)[0]
    return int(value_of(ds, keyword))  # type: ignore[arg-type]


_UNCHECKED = threading.Lock()
_unchecked_depth = 0
_unchecked_saved: int | None = None


@contextmanager
def unchecked_reads() -> Iterator[None]:
    """pydicom's checks of the values it converts, off for the raw copier (in this mode they only warn, so the
    values and the outputs are the same; the engine's rules judge the values). pydicom's setting is process-wide:
    overlapping blocks (two de-identifying threads of the PACS service) count, the first saves the caller's mode
    and the last puts it back, so no interleaving leaves the checks off."""
    global _unchecked_depth, _unchecked_saved
    with _UNCHECKED:
        if _unchecked_depth == 0:
            _unchecked_saved = config.settings.reading_validation_mode
            config.settings.reading_validation_mode = config.IGNORE
        _unchecked_depth += 1
    try:
        yield
    finally:
        with _UNCHECKED:
            _unchecked_depth -= 1
            if _unchecked_depth == 0 and _unchecked_saved is not None:
                config.settings.reading_validation_mode = _unchecked_saved


def sequence(raw: object, charset: object, ctx: FileContext) -> RawDataElement | None:
    """The still-raw sequence `raw` de-identified from its bytes: itself when nothing in it changes at any depth,
    a new raw element when something does; None when the engine must convert and walk it."""
    if (
        not isinstance(raw, RawDataElement)
        or raw.VR not in ("SQ", None)
        or raw.value is None
        or not raw.is_little_endian
        or ctx.options & LEVEL_OPTIONS
    ):
        return None
    counted = ctx.actions.copy()
    try:
        value = _items(raw.value, raw.is_implicit_VR, charset, ctx)
    except _Unusual:
        ctx.actions = counted  # the engine walks it instead, and counts its actions again
        return None
    if value is None:
        return raw
    length = UNDEFINED if raw.length == UNDEFINED else len(value)
    return RawDataElement(raw.tag, raw.VR, length, value, raw.value_tell, raw.is_implicit_VR, True)


def _items(data: bytes, implicit: bool, charset: object, ctx: FileContext) -> bytes | None:
    """A sequence value with every item de-identified, or None when no item changed."""
    pieces, changed, pos, end = [], False, 0, len(data)
    while pos < end:
        tag, _, length, start = _header(data, pos, end, True)
        if tag != ITEM:
            raise _Unusual
        if not implicit and length and data[start : start + 4] != _ITEM_END_BYTES and _looks_implicit(data, start):
            raise _Unusual  # an implicit VR item in an explicit VR file is re-encoded by the full path
        delimited = length == UNDEFINED
        if not delimited and start + length > end:
            raise _Unusual
        content, item_end = _item(data, start, end if delimited else start + length, implicit, charset, ctx, delimited)
        if content is None:
            pieces.append(data[pos:item_end])
        else:
            changed = True
            size = UNDEFINED if delimited else len(content)
            pieces.append(_HEADER.pack(0xFFFE, 0xE000, size) + content + (_ITEM_DELIMITER if delimited else b""))
        pos = item_end
    return b"".join(pieces) if changed else None


def _item(
    data: bytes, pos: int, end: int, implicit: bool, charset: object, ctx: FileContext, delimited: bool
) -> tuple[bytes | None, int]:
    """One item's de-identified content (None when unchanged) and the position after the item: kept elements are
    copied, the rest go through the engine (which calls `sequence` again for the sequences they hold)."""
    kept: list[tuple[int, bytes]] = []
    rest: dict[BaseTag, RawDataElement] = {}
    changed = False
    while True:
        if pos >= end:
            if delimited:
                raise _Unusual
            item_end = end
            break
        tag, vr, length, start = _header(data, pos, end, implicit)
        if tag == ITEM_END and delimited:
            item_end = start
            break
        if tag >> 16 == 0xFFFE or tag == 0x00080005:
            raise _Unusual  # stray delimiters; a character set of the item's own
        if length == UNDEFINED:
            value_end, element_end = _undefined_end(data, start, end, implicit, tag, vr)
        else:
            value_end = element_end = start + length
            if value_end > end:
                raise _Unusual
        piece = _direct(tag, vr, length, data[start:value_end], start, implicit, charset, ctx)
        if piece is None:
            key = BaseTag(tag)
            rest[key] = RawDataElement(key, vr, length, data[start:value_end], start, implicit, True)
        elif piece is _KEPT:
            kept.append((tag, data[pos:element_end]))
        else:
            changed = True
            if piece:
                kept.append((tag, piece))
        pos = element_end
    if rest:
        return _merge(kept, rest, implicit, charset, ctx), item_end
    if not changed:
        return None, item_end
    kept.sort(key=lambda item: item[0])
    return b"".join(piece for _, piece in kept), item_end


_KEPT = b"kept"


def _direct(
    tag: int, vr: str | None, length: int, value: bytes, start: int, implicit: bool, charset: object,
    ctx: FileContext,
) -> bytes | None:  # fmt: skip
    """What the engine would make of one element of an item, without building a data set: _KEPT (copy its
    bytes), b"" (removed), its new encoding (changed from its bytes); None when the engine must see it."""
    if tag >> 16 & 1:
        ctx.actions["private X"] += 1  # no Retain Safe Private here (LEVEL_OPTIONS): every private element goes
        return b""
    if tag in PIXEL_TAGS:  # pixel data in an item: never scanned, so never released (re-probe 20 #7)
        ctx.actions[NESTED_PIXELS] += 1
        return b""
    kind, action, label = element_decision(tag, vr, ctx.options)
    engine_vr = vr if vr and vr != "UN" else dictionary_vr(tag)  # implicit VR: the dictionary's (re-probe 20 #2)
    valid = valid_kept_value(engine_vr, value, ctx.patient_words, tag, ctx.natural_names)
    if kind == "keep" and length != UNDEFINED and not length & 1 and vr != "UN" and valid:
        return _KEPT
    if kind == "drop":
        return b""
    if kind == "remove" or action == "X":
        ctx.actions[label] += 1
        return b""
    if kind not in ("row", "dummy", "safe-ui"):
        return None
    new = raw_changed(
        RawDataElement(BaseTag(tag), vr, length, value, start, implicit, True), engine_vr, kind, action, ctx
    )
    if new is None:
        return None
    if label:
        ctx.actions[label] += 1
    return encoded_element(new, implicit, charset)


def _merge(
    kept: list[tuple[int, bytes]], rest: dict[BaseTag, RawDataElement], implicit: bool, charset: object,
    ctx: FileContext,
) -> bytes:  # fmt: skip
    """The item's encoding: kept elements' bytes and the engine's results for the rest, in tag order."""
    level = Dataset(rest, parent_encoding=charset)
    level.set_original_encoding(implicit, True, charset)  # type: ignore[arg-type]
    clean_level(level, ctx)
    pieces = list(kept)
    for tag in list(level.keys()):
        if tag.element == 0 and tag.group > 6:
            continue
        pieces.append((int(tag), encoded_element(level.get_item(tag), implicit, charset)))
    pieces.sort(key=lambda piece: piece[0])
    return b"".join(piece for _, piece in pieces)


def encode(out: FileDataset, original: Dataset, raw: RawFile) -> bytes | None:
    """`out` as file bytes as `writer.encode_dataset` writes it (pydicom's dcmwrite, enforce_file_format), with
    every top-level element still the parsed raw element copied from the input; None when the encoding changed."""
    ts = output_transfer_syntax(original, pixels_rewritten=False)
    if (
        ts != source_transfer_syntax(original)
        or out.original_encoding != (raw.implicit, True)
        or out.original_character_set != out._character_set
    ):
        return None
    out.file_meta = new_file_meta(out, original, ts)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = raw.implicit, True
    fp.write(b"\x00" * 128)  # never the input's preamble: 128 free bytes that may carry anything (PS3.10 7.1)
    fp.write(b"DICM")
    fp.write(file_meta_bytes(out.file_meta))
    compressed = UID(ts).is_compressed
    pixels = out.get_item(BaseTag(PIXEL_DATA), keep_deferred=True)
    if pixels is not None and not (_copied(raw, pixels) and (pixels.length == UNDEFINED) == compressed):
        out["PixelData"].is_undefined_length = compressed
    charset = value_of(out, "SpecificCharacterSet", default_encoding)
    data = raw.data
    for tag in sorted(out.keys()):
        if tag.element == 0 and tag.group > 6:
            continue
        elem = out.get_item(tag, keep_deferred=True)
        span = raw.spans.get(tag)
        if span is not None and span[0] is elem:
            fp.write(data[span[1] : span[2]])
            continue
        fp.write(encoded_element(out.get_item(tag), raw.implicit, charset))
    return fp.getvalue()


def _copied(raw: RawFile, elem: object) -> bool:
    span = raw.spans.get(getattr(elem, "tag", None))  # type: ignore[arg-type]
    return span is not None and span[0] is elem
