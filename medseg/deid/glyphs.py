"""Detector-free burned-in text finder: lines of glyph-shaped blobs in the image's darkest or brightest ink, and
annotation blocks made of such lines.

Software draws annotation text in one ink (black or white, the ends of the display range) while anatomy and noise
vary; tiny text (5 px glyphs on a 256 px slice) over noise defeats the neural detector but not this pass. On the MR
slice it was built for, the text pixels lie within 0-8 of the 0-255 rendering, broken by noise into fragments of
1-15 px, while the noise around them sits at 10-60 and its pixels rarely fall that low. Every threshold is relative
to the 8-bit rendering (`ocr.to_display`: min-max window) or to glyph geometry, never to one file:

- `INK_BAND` 8 (3 % of the range): ink is the extreme value give or take resampling blur and noise.
- `MIN_CONTRAST` 8 and `RING_FAR` 0.5: at least half of the ring of pixels around a glyph lies two bands or more
  from the ink (text is drawn to be read); air or clipped tissue at the extreme joins into large regions instead.
- `CLOSE` 2: blobs are labelled after a 2x2 closing, which rejoins strokes that noise or blur broke by one pixel;
  pixel counts and stroke widths are taken on the ink itself.
- Glyph size: `MIN_GLYPH_H` 3 to `MAX_GLYPH_H` 30 px high (smallest legible font to captions), at most
  `MAX_ASPECT` 16 heights wide (letters of a 5 px font touch, so a word of up to ~25 letters is one blob),
  `MIN_PIXELS` 3 (single pixels and pairs are noise); a blob touching the image border is cut, so not a glyph.
- Strokes: the thickest stroke (twice the largest chessboard distance to the outside, less one) is at most
  `STROKE_FRACTION` 0.3 of the height or `MIN_STROKE` 3 px (bold fonts stay under 30 %; tiny anti-aliased glyphs
  are 3 px thick); solid blobs (gas, vessels, calcifications) are thicker.
- Lines: glyphs overlap vertically by >= half the smaller height, follow each other with gaps <= `GAP_FACTOR` 1.5
  heights (letter and word spacing), keep heights within `HEIGHT_RATIO` 2.5 of the line's median (one font); a
  line needs `MIN_LETTERS` 2 letters (a short label or value), a blob counting as its width over `LETTER_WIDTH` 0.5 of
  its height, rounded (a capital or digit with its spacing is about half as wide as a blob is high once a
  descender of touching lowercase letters counts in the height).
- Blocks (`text_blocks`): burned-in demographics are blocks of left-aligned lines, so a line counts only inside a
  block of >= `MIN_BLOCK_LINES` 3 lines whose left edges differ by <= `ALIGN_PX` 3 px or `ALIGN_FRACTION` half a
  line height, with similar heights and a pitch <= `PITCH_FACTOR` 2.5 line heights; >= `MIN_INK_LINES` 2 of them
  must be ink lines (the others may be text detector boxes). Lone lines of blobs happen in anatomy (gas pockets
  under the table, streaks in air); on the 98 clean CT slices three or more never stack up like this.
- Quiet background: annotation text is placed where it can be read, so in the band around a block (two line
  heights, or half the block's height if more) at most `MAX_CLUTTER` 0.25 as many ink blobs (any shape, boxes of
  >= 3 px) reach into it as lie inside the block (a large region such as air counts once); a "block" assembled
  by chance from a field of random blobs (streak artefacts, coarse or clipped noise) sits in as many blobs as it
  holds. A block covers at most `MAX_BLOCK_SHARE` 25 % of
  the image (annotation blocks fill a corner or a side: 0.5-9.4 % of the image on the ground-truth set), so that
  quietness is judged on a real surrounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[int, int, int, int]

INK_BAND = 8
MIN_CONTRAST = 8
RING_FAR = 0.5
CLOSE = 2
MIN_GLYPH_H = 3
MAX_GLYPH_H = 30
MIN_PIXELS = 3
MIN_STROKE = 3
STROKE_FRACTION = 0.3
GAP_FACTOR = 1.5
HEIGHT_RATIO = 2.5
MIN_LETTERS = 2
MAX_ASPECT = 16.0
LETTER_WIDTH = 0.5
ALIGN_PX = 3
ALIGN_FRACTION = 0.5
PITCH_FACTOR = 2.5
MIN_BLOCK_LINES = 3
MIN_INK_LINES = 2
MAX_CLUTTER = 0.25
MAX_BLOCK_SHARE = 0.25


@dataclass(frozen=True)
class Glyph:
    """One connected blob of ink: its box (x1, y1 exclusive) and pixel count."""

    x0: int
    y0: int
    x1: int
    y1: int
    pixels: int

    @property
    def height(self) -> int:
        """Box height in pixels."""
        return self.y1 - self.y0

    @property
    def letters(self) -> int:
        """How many letters the blob spans: touching letters of a tiny font make one blob."""
        return max(1, int((self.x1 - self.x0) / (LETTER_WIDTH * self.height) + 0.5))


def _gray(image: np.ndarray) -> np.ndarray:
    """The 8-bit rendering as one channel (mean of the colour channels)."""
    return image if image.ndim == 2 else image[..., :3].mean(axis=2)


def _stroke_width(blob: np.ndarray) -> int:
    """Width of the thickest stroke: twice the largest chessboard distance from a blob pixel to the outside, less 1."""
    from scipy import ndimage

    padded = np.pad(blob, 1)
    return 2 * int(ndimage.distance_transform_cdt(padded, metric="chessboard").max()) - 1


def _glyphs(ink: np.ndarray, background: np.ndarray) -> tuple[list[Glyph], list[Box]]:
    """Connected ink blobs of glyph size and stroke shape whose surrounding ring contrasts with the ink, and the
    boxes of every ink blob (for the quiet-background test)."""
    from scipy import ndimage

    joined = ink | ndimage.binary_closing(ink, structure=np.ones((CLOSE, CLOSE), bool))
    labels, _ = ndimage.label(joined, structure=np.ones((3, 3), bool))
    found, blobs = [], []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        height, width = y1 - y0, x1 - x0
        if height * width >= MIN_PIXELS:
            blobs.append((x0, y0, x1, y1))
        if not (MIN_GLYPH_H <= height <= MAX_GLYPH_H and width <= MAX_ASPECT * height):
            continue
        if y0 == 0 or x0 == 0 or y1 == ink.shape[0] or x1 == ink.shape[1]:
            continue
        own = (labels[y0:y1, x0:x1] == index) & ink[y0:y1, x0:x1]
        pixels = int(own.sum())
        if pixels < MIN_PIXELS or _stroke_width(own) > max(MIN_STROKE, STROKE_FRACTION * height):
            continue
        ring_box = (slice(max(0, y0 - 1), y1 + 1), slice(max(0, x0 - 1), x1 + 1))
        blob = labels[ring_box] == index
        ring = ndimage.binary_dilation(blob, structure=np.ones((3, 3), bool)) & ~blob
        if ring.any() and background[ring_box][ring].mean() >= RING_FAR:
            found.append(Glyph(x0, y0, x1, y1, pixels))
    return found, blobs


def _lines(glyphs: list[Glyph]) -> list[list[Glyph]]:
    """Glyphs chained left to right into text lines (vertical overlap, small gaps, one font height)."""
    lines: list[list[Glyph]] = []
    for glyph in sorted(glyphs, key=lambda g: (g.x0, g.y0)):
        for line in lines:
            last = line[-1]
            overlap = min(last.y1, glyph.y1) - max(last.y0, glyph.y0)
            gap = glyph.x0 - last.x1
            if overlap >= 0.5 * min(last.height, glyph.height) and gap <= GAP_FACTOR * max(last.height, glyph.height):
                line.append(glyph)
                break
        else:
            lines.append([glyph])
    kept = []
    for line in lines:
        median = float(np.median([g.height for g in line]))
        same_font = [g for g in line if median / HEIGHT_RATIO <= g.height <= median * HEIGHT_RATIO]
        if sum(g.letters for g in same_font) >= MIN_LETTERS:
            kept.append(same_font)
    return kept


@dataclass(frozen=True)
class InkText:
    """What the ink pass read in one image, per ink (darkest, brightest): glyph-shaped blobs and their text lines."""

    glyphs: tuple[list[Glyph], ...]
    blobs: tuple[list[Box], ...]
    lines: tuple[list[Box], ...]
    shape: tuple[int, int]

    @property
    def all_lines(self) -> list[Box]:
        """The text lines of every ink."""
        return [box for lines in self.lines for box in lines]


def read_ink(image: np.ndarray) -> InkText:
    """Glyphs and text lines drawn in the darkest or brightest ink of an 8-bit image."""
    gray = _gray(np.asarray(image)).astype(np.int16)
    passes = ((gray <= INK_BAND, gray >= INK_BAND + MIN_CONTRAST),
              (gray >= 255 - INK_BAND, gray <= 255 - INK_BAND - MIN_CONTRAST))  # fmt: skip
    glyphs, blobs, lines = [], [], []
    for ink, background in passes:
        found, every = _glyphs(ink, background)
        glyphs.append(found)
        blobs.append(every)
        lines.append([(min(g.x0 for g in line), min(g.y0 for g in line),
                       max(g.x1 for g in line), max(g.y1 for g in line)) for line in _lines(found)])  # fmt: skip
    return InkText(tuple(glyphs), tuple(blobs), tuple(lines), (int(gray.shape[0]), int(gray.shape[1])))


def find_text_lines(image: np.ndarray) -> list[Box]:
    """Boxes (x0, y0, x1, y1 exclusive) of text lines drawn in the darkest or brightest ink of an 8-bit image."""
    return read_ink(image).all_lines


def _aligned(upper: Box, lower: Box) -> bool:
    """True when `lower` is the next line of the same block as `upper`: same left margin, similar height, close."""
    heights = (upper[3] - upper[1], lower[3] - lower[1])
    height = max(heights)
    same_margin = abs(upper[0] - lower[0]) <= max(ALIGN_PX, ALIGN_FRACTION * height)
    similar = height <= HEIGHT_RATIO * min(heights)
    return same_margin and similar and 0 < lower[1] - upper[1] <= PITCH_FACTOR * height


def _quiet_around(block: Box, line_height: int, blobs: list[Box]) -> bool:
    """True when few ink blobs (of any shape) reach into the band around the block compared with inside it.

    Blobs within one line height beside the lines or half of one above or below count as the block's own: trailing
    punctuation and marks too small to be glyphs (a colon after a merged word) are part of the text, not clutter."""
    x0, y0, x1, y1 = block
    margin = max(2 * line_height, (y1 - y0) // 2)
    a, b, c, d = x0 - margin, y0 - margin, x1 + margin, y1 + margin
    p, q = x0 - line_height, y0 - line_height // 2
    r, t = x1 + line_height, y1 + line_height // 2
    inside = sum(bx0 >= p and by0 >= q and bx1 <= r and by1 <= t for bx0, by0, bx1, by1 in blobs)
    reaching = sum(bx0 < c and a < bx1 and by0 < d and b < by1 for bx0, by0, bx1, by1 in blobs)
    return reaching - inside <= MAX_CLUTTER * inside


def text_blocks(ink: InkText, detected: list[Box]) -> list[Box]:
    """Rectangles of annotation blocks: >= 3 left-aligned lines at a regular pitch, >= 2 of them ink lines of one
    ink, on a background quiet in that ink.

    Lines are the ink lines and the boxes of a text detector (recognised or not); a block needs two ink lines so
    that detector boxes alone (anatomy read as text) never make one. The whole rectangle is returned: text in a
    block that neither pass found whole (fragments, a word over anatomy) lies inside it."""
    found: list[Box] = []
    for blobs, lines in zip(ink.blobs, ink.lines, strict=True):
        if len(lines) < MIN_INK_LINES:
            continue
        candidates = sorted({(*b, True) for b in lines} | {(*b, False) for b in detected}, key=lambda c: (c[1], c[0]))
        blocks: list[list[tuple[int, int, int, int, bool]]] = []
        for cand in candidates:
            for block in blocks:
                if _aligned(block[-1][:4], cand[:4]):
                    block.append(cand)
                    break
            else:
                blocks.append([cand])
        for b in blocks:
            if len(b) >= MIN_BLOCK_LINES and sum(c[4] for c in b) >= MIN_INK_LINES:
                box = (min(c[0] for c in b), min(c[1] for c in b), max(c[2] for c in b), max(c[3] for c in b))
                small = (box[2] - box[0]) * (box[3] - box[1]) <= MAX_BLOCK_SHARE * ink.shape[0] * ink.shape[1]
                line_height = int(np.median([c[3] - c[1] for c in b]))
                if small and box not in found and _quiet_around(box, line_height, blobs):
                    found.append(box)
    return found
