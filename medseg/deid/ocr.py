"""Text detection in images with rapidocr (ONNX models shipped in its wheel; runs offline), imported lazily."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_ALNUM = 2
MIN_SCORE = 0.5


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


def to_display(frame: np.ndarray, photometric: str) -> np.ndarray:
    """An 8-bit RGB rendering of one frame (min-max window; MONOCHROME1 inverted) for the text detector."""
    arr = np.asarray(frame, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[..., :3]
    lo, hi = float(arr.min()), float(arr.max())
    scaled = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled if scaled.ndim == 3 else np.repeat(scaled[..., None], 3, axis=2)


def detect_text(image: np.ndarray, filtered: bool = True) -> list[TextBox]:
    """Text boxes in an 8-bit RGB image; filtered: keep boxes with >= 2 letters/digits and score >= 0.5."""
    result = _engine()(image, use_det=True, use_cls=False, use_rec=True)
    if result.boxes is None:
        return []
    texts = result.txts or ("",) * len(result.boxes)
    scores = result.scores or (1.0,) * len(result.boxes)
    boxes = []
    for poly, text, score in zip(result.boxes, texts, scores, strict=False):
        alnum = sum(ch.isalnum() for ch in str(text))
        if filtered and (alnum < MIN_ALNUM or float(score) < MIN_SCORE):
            continue
        xs, ys = np.asarray(poly)[:, 0], np.asarray(poly)[:, 1]
        boxes.append(
            TextBox(int(np.floor(xs.min())), int(np.floor(ys.min())), int(np.ceil(xs.max())) + 1,
                    int(np.ceil(ys.max())) + 1, float(score), alnum)
        )  # fmt: skip
    return boxes
