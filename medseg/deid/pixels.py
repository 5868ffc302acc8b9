"""Burned-in text: find it with OCR in every frame, blank it with a margin, check again, or quarantine the file.

The BurnedInAnnotation flag is not trusted (real exports say NO over names in the pixels), so every decodable
image is scanned except objects whose pixels are computed, never rendered (SEG, RT Dose).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, RLELossless

from medseg.deid.glyphs import find_text_lines, read_ink, text_blocks
from medseg.deid.ocr import TextBox, detect_text, detect_text_all, display_window, to_display
from medseg.deid.values import value_of

AT_RISK_MODALITIES = frozenset({"US", "SC", "XA", "RF", "CR", "DX", "MG", "OT", "IO", "PX", "XC", "ES", "GM", "DOC"})
COMPUTED_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
})  # fmt: skip
MARGIN_PX = 3
MARGIN_FRACTION = 0.15
MAX_ROUNDS = 2
MAX_BLANKED_FRACTION = 0.5
MAX_LEFTOVER_FRACTION = 0.25


@dataclass
class PixelOutcome:
    """What happened to one file's pixels: status, reason, frames scanned and the regions blanked per frame."""

    status: str  # no-pixels | computed | not-scanned | clean | cleaned | quarantine
    reason: str | None = None
    frames: int = 0
    regions: list[tuple[int, int, int, int, int]] = field(default_factory=list)  # frame, x0, y0, x1, y1

    @property
    def rewritten(self) -> bool:
        """True when new pixel data was written."""
        return self.status == "cleaned"


def at_risk(ds: Dataset) -> bool:
    """Modalities and objects that usually carry burned-in text: projections, US, captures, scouts."""
    image_type = [str(v).upper() for v in (value_of(ds, "ImageType") or [])]  # type: ignore[attr-defined]
    sop = str(value_of(ds, "SOPClassUID", ""))
    return (
        str(value_of(ds, "Modality", "")).upper() in AT_RISK_MODALITIES
        or "LOCALIZER" in image_type
        or sop.startswith("1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture family
        or str(value_of(ds, "BurnedInAnnotation", "")).upper() == "YES"
    )


def _frames(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """(frames, rows, cols[, samples]) whatever the number of frames."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return arr[None] if arr.ndim == (3 if samples > 1 else 2) else arr


def _margin(box: TextBox) -> int:
    return MARGIN_PX + int(MARGIN_FRACTION * (box.y1 - box.y0))


def _blank(frame: np.ndarray, boxes: list[TextBox], fill: float | int) -> list[TextBox]:
    height, width = frame.shape[:2]
    grown = [b.grown(_margin(b), width, height) for b in boxes]
    for b in grown:
        frame[b.y0 : b.y1, b.x0 : b.x1] = fill
    return grown


def _colours(frame: np.ndarray, ds: Dataset, photometric: str) -> tuple[np.ndarray, str]:
    """The frame as the detector's rendering starts from: palette indices through their lookup table."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return apply_color_lut(frame, ds), "RGB"
    return frame, photometric


def _render(frame: np.ndarray, ds: Dataset, photometric: str, window: tuple[float, float] | None = None) -> np.ndarray:
    return to_display(*_colours(frame, ds, photometric), window)


def _blanked_fraction(boxes: list[TextBox], height: int, width: int) -> float:
    covered = np.zeros((height, width), dtype=bool)
    for b in boxes:
        covered[b.y0 : b.y1, b.x0 : b.x1] = True
    return float(covered.mean())


def _decode(ds: Dataset) -> tuple[np.ndarray, str]:
    """The pixel array (RGB for YBR inputs) and the photometric interpretation it is in."""
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("YBR") and "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
        photometric = "RGB"  # pydicom converts decoded JPEG YBR to RGB
    elif photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        arr, photometric = convert_color_space(arr, photometric, "RGB"), "RGB"
    return np.array(arr, copy=True), photometric


def _as_box(box: tuple[int, int, int, int]) -> TextBox:
    return TextBox(*box, 1.0, 0)


def _text_boxes(display: np.ndarray, strict: bool) -> list[TextBox]:
    """Recognised text boxes, plus whole annotation blocks found by ink lines lined up with the detector's boxes."""
    kept, detected = detect_text_all(display, strict=strict)
    ink = read_ink(display)
    blocks = text_blocks(ink, [(b.x0, b.y0, b.x1, b.y1) for b in detected]) if ink.all_lines else []
    return kept + [_as_box(b) for b in blocks]


def _leftover_boxes(display: np.ndarray) -> list[TextBox]:
    """Anything text-like for the check after blanking: detector boxes (no recognition) and ink lines. A box over a
    quarter of the image is not a line of text: the detector answers so for some images with a blanked rectangle
    (a CT with one line of text gave a box over the whole frame, and blanking it released a black image)."""
    height, width = display.shape[:2]
    boxes = detect_text(display, filtered=False) + [_as_box(b) for b in find_text_lines(display)]
    return [b for b in boxes if (b.x1 - b.x0) * (b.y1 - b.y0) <= MAX_LEFTOVER_FRACTION * height * width]


# Objects whose payload is a recording no header rule or text scan can clean (speech can say the patient's name)
RECORDING_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.9.4.1",  # Basic Voice Audio Waveform
    "1.2.840.10008.5.1.4.1.1.9.4.2",  # General Audio Waveform
})  # fmt: skip
RECORDING_REASON = (
    "an audio recording (voice or general audio waveform, or waveform samples of an unknown class): it cannot be "
    "de-identified; not released"
)
FLOAT_PIXELS = (0x7FE00008, 0x7FE00009)  # Float Pixel Data, Double Float Pixel Data
FLOAT_REASON = "Float or Double Float Pixel Data: the text scan reads integer pixels only; review this image by hand"


def sop_class(ds: Dataset) -> str:
    """The object's SOP Class UID, or the file meta's Media Storage SOP Class UID when the data set has none
    (re-probe 20 #6: a voice recording whose class was only in the file meta was released)."""
    meta = getattr(ds, "file_meta", None)
    own = str(value_of(ds, "SOPClassUID", "") or "").strip("\0 ")
    return own or (str(meta.get("MediaStorageSOPClassUID", "") or "").strip("\0 ") if meta is not None else "")


def is_recording(ds: Dataset) -> bool:
    """An audio recording (`RECORDING_SOP_CLASSES`, by `sop_class`), or waveform samples (Waveform Data in the
    Waveform Sequence) of an object whose class is missing or not a registered one: what the samples are (ECG or
    speech) cannot be told then, so they are handled as a recording."""
    from medseg.deid.keyed import registered_uid

    sop = sop_class(ds)
    if sop in RECORDING_SOP_CLASSES:
        return True
    items = value_of(ds, "WaveformSequence") or []
    samples = any("WaveformData" in item for item in items)  # type: ignore[attr-defined]
    return samples and not registered_uid(sop)


def has_float_pixels(ds: Dataset) -> bool:
    """Whether a dataset holds Float (7FE0,0008) or Double Float (7FE0,0009) Pixel Data: pixels like any other
    (review 20 #4: they were released unscanned as 'no-pixels' and certified by the check)."""
    return any(tag in ds for tag in FLOAT_PIXELS)


def scan_and_clean(ds: Dataset, scan: bool) -> PixelOutcome:
    """Scan (and if needed clean, in place) the pixels of a header-de-identified dataset with its original file meta;
    float pixels (`has_float_pixels`) and audio recordings (`RECORDING_SOP_CLASSES`, review 20 #5) are quarantined,
    since nothing here can read them."""
    if is_recording(ds):
        return PixelOutcome("quarantine", RECORDING_REASON)
    if has_float_pixels(ds) and str(value_of(ds, "SOPClassUID", "")) not in COMPUTED_SOP_CLASSES:
        return PixelOutcome("quarantine", FLOAT_REASON)
    if "PixelData" not in ds:
        return PixelOutcome("no-pixels")
    if str(value_of(ds, "SOPClassUID", "")) in COMPUTED_SOP_CLASSES:
        return PixelOutcome("computed")
    if not scan:
        if at_risk(ds):
            return PixelOutcome("quarantine", "pixels at risk of burned-in text were not scanned (--pixels off)")
        return PixelOutcome("not-scanned")
    try:
        arr, photometric = _decode(ds)
    except Exception as exc:  # any decoder failure means the pixels cannot be checked
        return PixelOutcome("quarantine", f"pixel data cannot be decoded for a text check ({type(exc).__name__})")
    frames = _frames(arr, ds)
    strict = not at_risk(ds)
    regions: list[tuple[int, int, int, int, int]] = []
    for index in range(frames.shape[0]):
        frame = frames[index]
        window = display_window(_colours(frame, ds, photometric)[0])
        boxes = _text_boxes(_render(frame, ds, photometric, window), strict)
        rounds, cleaned = 0, []
        fill = frame.max() if photometric == "MONOCHROME1" else frame.min()
        while boxes and rounds < MAX_ROUNDS:
            grown = _blank(frame, boxes, fill)
            cleaned.extend(grown)
            regions.extend((index, b.x0, b.y0, b.x1, b.y1) for b in grown)
            rounds += 1
            # verification: detection only (no recognition), anything text-like left inside a cleaned region, seen
            # in the window of the first look (a min-max window after blanking re-stretches the image: the blanked
            # text was its brightest part, and the whole body then reads as one text box)
            display = _render(frame, ds, photometric, window)
            boxes = [b for b in _leftover_boxes(display) if any(b.overlaps(c) for c in cleaned)]
        if boxes:
            return PixelOutcome(
                "quarantine", f"text still detected after {MAX_ROUNDS} cleaning rounds", frames.shape[0], regions
            )
        share = _blanked_fraction(cleaned, *frame.shape[:2])
        if share > MAX_BLANKED_FRACTION:
            reason = f"cleaning would blank {share:.0%} of frame {index}: review this image by hand"
            return PixelOutcome("quarantine", reason, frames.shape[0], regions)
    if not regions:
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            return PixelOutcome("quarantine", "BurnedInAnnotation is YES but no text was detected", frames.shape[0])
        return PixelOutcome("clean", None, frames.shape[0])
    reason = _write_back(ds, frames, photometric)
    if reason:
        return PixelOutcome("quarantine", reason, frames.shape[0], regions)
    return PixelOutcome("cleaned", None, frames.shape[0], regions)


def little_endian(arr: np.ndarray) -> np.ndarray:
    """`arr` with little endian items: set_pixel_data writes the array's bytes as they are, and a big endian input
    decodes to a big endian array (written as is, every 16-bit value came out byte-swapped: 905 became -30461)."""
    return arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr


def _write_back(ds: Dataset, frames: np.ndarray, photometric: str) -> str | None:
    """Store the cleaned frames as native pixel data; a reason string when that is not possible."""
    data = little_endian(frames[0] if frames.shape[0] == 1 else frames)
    if data.dtype not in (np.uint8, np.uint16, np.int8, np.int16):
        return f"cleaned pixels of type {data.dtype} cannot be stored"
    bits = int(ds.get("BitsStored", data.dtype.itemsize * 8))
    try:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_pixel_data(data, photometric, bits, generate_instance_uid=False)
    except (ValueError, NotImplementedError, AttributeError) as exc:
        return f"cleaned pixels cannot be stored ({type(exc).__name__})"
    if "NumberOfFrames" not in ds and frames.shape[0] > 1:
        ds.NumberOfFrames = frames.shape[0]
    return None


def frames_for_check(ds: Dataset, indices: list[int] | None = None) -> list[tuple[int, np.ndarray]]:
    """8-bit renderings of the given frames (all when None) of a written file, for the leak check's OCR pass."""
    arr, photometric = _decode(ds)
    frames = _frames(arr, ds)
    chosen = range(frames.shape[0]) if indices is None else [i for i in indices if i < frames.shape[0]]
    return [(i, _render(frames[i], ds, photometric)) for i in chosen]


def _bit_layout(ds: Dataset) -> tuple[int, int, int, bool] | None:
    """(bits allocated, lowest stored bit, high bit, signed) of native pixel data with bits outside the stored ones,
    or None when every bit is stored, the layout is not one this clears (1-bit, odd sizes) or is inconsistent."""
    try:
        allocated = int(value_of(ds, "BitsAllocated", 0) or 0)  # type: ignore[arg-type]
        stored = int(value_of(ds, "BitsStored", allocated) or allocated)  # type: ignore[arg-type]
        high = int(value_of(ds, "HighBit", stored - 1) or stored - 1)  # type: ignore[arg-type]
        signed = int(value_of(ds, "PixelRepresentation", 0) or 0) == 1  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    low = high - stored + 1
    if allocated not in (8, 16, 32) or low < 0 or high >= allocated or (stored == allocated and low == 0):
        return None
    return allocated, low, high, signed


def clear_unused_bits(ds: Dataset, big_endian: bool) -> bool:
    """Clear the bits of native pixel data outside BitsStored/HighBit (above HighBit: copies of the sign bit for
    PixelRepresentation 1, as two's complement needs). Unused bits can hold a retired embedded overlay (a name
    drawn into bit 15 of a 12-bit MR) that no rendering, OCR or header rule sees; pixel values are unchanged.
    RLE Lossless keeps every byte plane of BitsAllocated (pydicom's decoder masks them away, so nothing shows them):
    RLE pixel data with such bits set is written native little endian, cleared (review 18b #1). True when bytes
    changed; the caller writes a changed RLE dataset as rewritten pixels (its transfer syntax is then native)."""
    cleared = with_unused_bits_cleared(ds, big_endian)
    if cleared is None:
        return False
    if ds.file_meta.get("TransferSyntaxUID") == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if int(value_of(ds, "SamplesPerPixel", 1) or 1) > 1:  # type: ignore[arg-type]
            ds.PlanarConfiguration = 1  # the RLE decoder's byte order: one colour plane after the other
        ds["PixelData"].VR = "OW" if int(value_of(ds, "BitsAllocated", 8) or 8) > 8 else "OB"  # type: ignore[arg-type]
        ds["PixelData"].is_undefined_length = False
    ds.PixelData = cleared
    return True


def rle_native(ds: Dataset) -> bytes | None:
    """RLE Lossless pixel data decoded to native little endian bytes with every bit of BitsAllocated (pydicom's
    pixel_array masks to BitsStored), or None when not RLE or not decodable (the pixel scan quarantines those)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") != RLELossless or not isinstance(ds.get("PixelData"), bytes):
        return None
    from pydicom.encaps import generate_frames
    from pydicom.pixels.decoders.rle import _rle_decode_frame

    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(value_of(ds, "SamplesPerPixel", 1) or 1)  # type: ignore[arg-type]
        bits, count = int(ds.BitsAllocated), int(value_of(ds, "NumberOfFrames", 1) or 1)  # type: ignore[arg-type]
        frames = generate_frames(ds.PixelData, number_of_frames=count)
        return b"".join(bytes(_rle_decode_frame(f, rows, cols, samples, bits)) for f in frames)
    except Exception:  # a broken stream: the decoder of the pixel scan and of the check fails on it as well
        return None


def _raw_pixels(ds: Dataset) -> tuple[bytes, bool] | None:
    """(native bytes, big endian) of the pixel data to look at for unused bits: native data as stored, RLE decoded
    with all its byte planes; None for other encapsulated data (those codecs hold at most BitsStored bits)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    elem = ds.get_item(0x7FE00010) if "PixelData" in ds else None
    if elem is None or not isinstance(elem.value, bytes):
        return None
    if ts == RLELossless:
        decoded = rle_native(ds)
        return None if decoded is None else (decoded, False)
    if ts is not None and ts.is_compressed:
        return None
    return elem.value, ts == ExplicitVRBigEndian


def with_unused_bits_cleared(ds: Dataset, big_endian: bool) -> bytes | None:
    """The native pixel data bytes with the bits outside BitsStored/HighBit cleared (see `clear_unused_bits`), or
    None when none is set or the pixel data is neither native nor RLE; the leak check asks it too."""
    layout = _bit_layout(ds)
    found = _raw_pixels(ds) if layout is not None else None
    if found is None or layout is None:
        return None
    raw, big = found[0], big_endian and found[1]
    new, arr, dtype, count = _cleared(raw, layout, big)
    if np.array_equal(new, arr):
        return None
    return new.astype(dtype).tobytes() + raw[count * dtype.itemsize :]


def _cleared(raw: bytes, layout: tuple[int, int, int, bool], big: bool) -> tuple[np.ndarray, np.ndarray, np.dtype, int]:
    """(cleared values, stored values, item dtype, item count) of native pixel bytes (`clear_unused_bits`)."""
    allocated, low, high, signed = layout
    dtype = np.dtype(f"{'>' if big else '<'}u{allocated // 8}")
    count = len(raw) // dtype.itemsize
    arr = np.frombuffer(raw, dtype, count).astype(np.uint64)
    new = arr & np.uint64(((1 << (high - low + 1)) - 1) << low)
    if signed:
        above = ((1 << allocated) - 1) & ~((1 << (high + 1)) - 1)
        new |= ((arr >> np.uint64(high)) & np.uint64(1)) * np.uint64(above)
    return new, arr, dtype, count


def unused_bits_hold_data(ds: Dataset, big_endian: bool) -> bool:
    """Whether native or RLE pixel data has bits outside BitsStored/HighBit that are neither zero nor (signed data,
    above HighBit) copies of the sign bit: room for an embedded overlay. Zeros above the sign bit of a signed image
    carry nothing and read as the same values (review 18b #9); the leak check asks this."""
    layout = _bit_layout(ds)
    found = _raw_pixels(ds) if layout is not None else None
    if found is None or layout is None:
        return False
    new, arr, _, _ = _cleared(found[0], layout, big_endian and found[1])
    _, low, high, _ = layout
    plain = arr & np.uint64(((1 << (high - low + 1)) - 1) << low)
    return bool(np.any((arr != new) & (arr != plain)))
