"""Text detection in images with rapidocr (ONNX models shipped in its wheel; runs offline), imported lazily."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_ALNUM = 2
MIN_SCORE = 0.5
STRICT_ALNUM = 4
STRICT_SCORE = 0.75
SMALL_SIDE = 384
UPSCALE_TARGET = 768


@dataclass(frozen=True)
class TextBox:
    """An axis-aligned box around detected text, in pixel coordinates (x1, y1 exclusive), with its score."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float
    alnum: int

    def grown(self, margin: int, width: int, height: int) -> TextBox:
        """The box grown by `margin` pixels on each side, clipped to the image."""
        return TextBox(
            max(0, self.x0 - margin), max(0, self.y0 - margin), min(width, self.x1 + margin),
            min(height, self.y1 + margin), self.score, self.alnum,
        )  # fmt: skip

    def overlaps(self, other: TextBox) -> bool:
        """True when the two boxes share at least one pixel."""
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1


@functools.cache
def _engine() -> Any:
    from rapidocr import RapidOCR

    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    return RapidOCR(params={"Global.use_cls": False, "Global.log_level": "error"})


def display_window(frame: np.ndarray) -> tuple[float, float]:
    """The min-max window `to_display` uses by default (colour channels beyond RGB ignored)."""
    arr = np.asarray(frame)
    arr = arr[..., :3] if arr.ndim == 3 else arr
    return float(arr.min()), float(arr.max())


def to_display(frame: np.ndarray, photometric: str, window: tuple[float, float] | None = None) -> np.ndarray:
    """An 8-bit RGB rendering of one frame (min-max window unless `window` is given; MONOCHROME1 inverted) for the
    text detector."""
    arr = np.asarray(frame, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[..., :3]
    lo, hi = window if window is not None else display_window(arr)
    scaled = np.zeros(arr.shape, np.uint8) if hi <= lo else (
        (np.clip(arr, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)  # fmt: skip
    if photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled if scaled.ndim == 3 else np.repeat(scaled[..., None], 3, axis=2)


def _upscale(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Small images (<= 384 px) enlarged so their few-pixel text reaches the detector's working size."""
    side = max(image.shape[:2])
    if side > SMALL_SIDE:
        return image, 1
    factor = -(-UPSCALE_TARGET // side)
    from PIL import Image

    big = Image.fromarray(image).resize((image.shape[1] * factor, image.shape[0] * factor), Image.BICUBIC)
    return np.asarray(big), factor


def detect_text(image: np.ndarray, filtered: bool = True, strict: bool = False) -> list[TextBox]:
    """Text boxes in an 8-bit RGB image; filtered: recognise each box and keep those with >= 2 letters/digits
    and a score >= 0.5 (strict, for images not at risk: short strings need a score >= 0.75, since anatomy
    reads as two or three letters at scores 0.53-0.68 on clean CT); unfiltered: detection only."""
    return detect_text_all(image, filtered, strict)[0]


def detect_text_all(
    image: np.ndarray, filtered: bool = True, strict: bool = False
) -> tuple[list[TextBox], list[TextBox]]:
    """The boxes `detect_text` keeps, and every box the detector found (rejected ones too), from one detector run."""
    image, factor = _upscale(image)
    result = _engine()(image, use_det=True, use_cls=False, use_rec=filtered)
    if result.boxes is None or len(result.boxes) == 0:
        return [], []
    texts = getattr(result, "txts", None) or ("",) * len(result.boxes)
    scores = (getattr(result, "scores", None) if filtered else None) or (1.0,) * len(result.boxes)
    kept, detected = [], []
    for poly, text, score in zip(result.boxes, texts, scores, strict=False):
        alnum = sum(ch.isalnum() for ch in str(text))
        xs, ys = np.asarray(poly)[:, 0] / factor, np.asarray(poly)[:, 1] / factor
        box = TextBox(int(np.floor(xs.min())), int(np.floor(ys.min())), int(np.ceil(xs.max())) + 1,
                      int(np.ceil(ys.max())) + 1, float(score), alnum)  # fmt: skip
        detected.append(box)
        if filtered and (alnum < MIN_ALNUM or float(score) < MIN_SCORE):
            continue
        if filtered and strict and alnum < STRICT_ALNUM and float(score) < STRICT_SCORE:
            continue
        kept.append(box)
    return kept, detected


def available() -> str | None:
    """None when the OCR engine can be loaded, else why not (the leak check then says pixels were not checked)."""
    try:
        _engine()
    except Exception as exc:  # a missing wheel or a broken model: anything that stops OCR
        return f"OCR unavailable ({type(exc).__name__})"
    return None


def read_text(image: np.ndarray) -> list[tuple[TextBox, str]]:
    """Every box the detector finds in an 8-bit RGB image with the text recognised in it (score in the box), for
    the leak check: it searches that text for the originals' identifying values, whatever the score."""
    image, factor = _upscale(image)
    result = _engine()(image, use_det=True, use_cls=False, use_rec=True)
    if result.boxes is None or len(result.boxes) == 0:
        return []
    texts = getattr(result, "txts", None) or ("",) * len(result.boxes)
    scores = getattr(result, "scores", None) or (1.0,) * len(result.boxes)
    found = []
    for poly, text, score in zip(result.boxes, texts, scores, strict=False):
        xs, ys = np.asarray(poly)[:, 0] / factor, np.asarray(poly)[:, 1] / factor
        box = TextBox(int(np.floor(xs.min())), int(np.floor(ys.min())), int(np.ceil(xs.max())) + 1,
                      int(np.ceil(ys.max())) + 1, float(score), sum(ch.isalnum() for ch in str(text)))  # fmt: skip
        found.append((box, str(text)))
    return found
