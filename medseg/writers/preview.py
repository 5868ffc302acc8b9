"""preview.png: axial, coronal and sagittal slices through the organ with the mask outlined, for a glance check.

Slices are shown in the radiological convention (patient right on the image left, anterior up, head up),
whatever the stored orientation, with the true aspect ratio from the voxel spacing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from medseg.io import Geometry, Volume
from medseg.io.atomic import atomic_path
from medseg.postprocess.measure import axis_profiles

TILE = 320
CAPTION_HEIGHT = 22  # one line of caption; each further line adds LINE_HEIGHT
LINE_HEIGHT = 14
CAPTION_MARGIN = 6
COLOURS = [(255, 64, 64), (64, 200, 255), (255, 220, 0), (120, 255, 120), (255, 120, 255)]


def _lps_axes(geometry: Geometry) -> tuple[list[int], list[bool]]:
    """For each of L, P, S: the array axis that runs along it, and whether it runs the opposite way."""
    d = geometry.direction_matrix
    axes = [int(np.argmax(np.abs(d[:, c]))) for c in range(3)]
    if sorted(axes) != [0, 1, 2]:
        axes = [0, 1, 2]
    order = [axes.index(w) for w in range(3)]
    return order, [bool(d[w, c] < 0) for w, c in enumerate(order)]


def _to_lps(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Flip/transpose an [i, j, k] array so its axes run along L, P, S; returns it with the matching spacing."""
    order, flips = _lps_axes(geometry)
    out = array.transpose(order)
    for w, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=w)
    return out, np.asarray(geometry.spacing)[order]


def _grey(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((plane - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _tile(
    image: np.ndarray, labels: np.ndarray, pixel_mm: tuple[float, float], display_hu: tuple[float, float]
) -> object:
    """One RGB tile (rows, cols plane) with label outlines and a faint fill, resized to true aspect."""
    from PIL import Image

    rgb = np.repeat(_grey(image, *display_hu)[..., None], 3, axis=2).astype(np.float32)
    for value in np.unique(labels[labels > 0]):
        colour = np.asarray(COLOURS[(int(value) - 1) % len(COLOURS)], dtype=np.float32)
        mask = labels == value
        rgb[mask] = 0.75 * rgb[mask] + 0.25 * colour
        rgb[_outline(mask)] = colour
    tile = Image.fromarray(rgb.astype(np.uint8))
    h_mm, w_mm = image.shape[0] * pixel_mm[0], image.shape[1] * pixel_mm[1]
    scale = TILE / max(h_mm, w_mm)
    return tile.resize((max(int(w_mm * scale), 1), max(int(h_mm * scale), 1)), Image.Resampling.BILINEAR)


def _centre(labels: np.ndarray, geometry: Geometry, within: tuple[slice, ...] | None = None) -> np.ndarray:
    """Integer centroid of the labelled voxels in the L, P, S-ordered array, or its centre when there are none.

    `within`: a box holding every labelled voxel (the pipeline knows it), so only the box is scanned. Computed from
    the integer voxel counts per index, so it is exactly the centroid of the reordered whole array."""
    order, flips = _lps_axes(geometry)
    region = labels if within is None else labels[within]
    profiles = axis_profiles(region > 0)
    total = int(profiles[0].sum())
    if total == 0:
        return np.asarray(labels.shape)[order] // 2
    starts = [0] * labels.ndim if within is None else [s.start for s in within]
    sums = [int((p * (np.arange(p.size) + start)).sum()) for p, start in zip(profiles, starts, strict=True)]
    centre = []
    for c, flip in zip(order, flips, strict=True):
        numerator = (labels.shape[c] - 1) * total - sums[c] if flip else sums[c]
        centre.append(round(float(numerator) / total))
    return np.array(centre)


def caption_lines(caption: str, width: float, measure: Callable[[str], float]) -> list[str]:
    """The caption broken into lines no wider than `width` (as `measure` gives a text's width): at spaces, and
    inside a word only when the word alone is wider. Every character of the caption is on some line, so no QC flag
    is cut off the image however narrow the sheet or long the case name."""
    lines: list[str] = []
    line = ""
    for word in caption.split(" "):
        candidate = f"{line} {word}" if line else word
        if measure(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = word
        while measure(line) > width and len(line) > 1:
            cut = max(n for n in range(1, len(line) + 1) if n == 1 or measure(line[:n]) <= width)
            lines.append(line[:cut])
            line = line[cut:]
    return [*lines, line] if line else lines


def render_preview(
    volume: Volume,
    labels: np.ndarray,
    caption: str = "",
    display_hu: tuple[float, float] = (-160.0, 240.0),
    within: tuple[slice, ...] | None = None,
) -> object:
    """A PIL image with three orthogonal slices through the centroid of the labels (or the volume centre);
    `within`: a box holding every labelled voxel (speeds up finding the centroid)."""
    from PIL import Image

    img, spacing = _to_lps(volume.array, volume.geometry)
    lab, _ = _to_lps(labels, volume.geometry)
    c = _centre(labels, volume.geometry, within)
    sx, sy, sz = spacing
    # axial: rows posterior-going (anterior up), cols L-going (patient right on the left)
    axial = (img[:, :, c[2]].T, lab[:, :, c[2]].T, (sy, sx))
    # coronal: rows inferior-going (head up), cols L-going
    coronal = (img[:, c[1], :].T[::-1], lab[:, c[1], :].T[::-1], (sz, sx))
    # sagittal: rows inferior-going, cols P-going (anterior on the left)
    sagittal = (img[c[0], :, :].T[::-1], lab[c[0], :, :].T[::-1], (sz, sy))
    tiles = [_tile(a, b, p, display_hu) for a, b, p in (axial, coronal, sagittal)]
    from PIL import ImageDraw

    height = max(t.height for t in tiles)
    width = sum(t.width for t in tiles) + 8 * (len(tiles) - 1)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines = caption_lines(caption, width - 2 * CAPTION_MARGIN, measure) if caption else []
    top = CAPTION_HEIGHT + LINE_HEIGHT * (len(lines) - 1) if lines else 0
    sheet = Image.new("RGB", (width, height + top))
    x = 0
    for t in tiles:
        sheet.paste(t, (x, top + (height - t.height) // 2))
        x += t.width + 8
    draw = ImageDraw.Draw(sheet)
    for n, line in enumerate(lines):
        draw.text((CAPTION_MARGIN, 4 + n * LINE_HEIGHT), line, fill=(255, 255, 255))
    return sheet


def write_preview(
    volume: Volume,
    labels: np.ndarray,
    path: Path,
    overwrite: bool = False,
    caption: str = "",
    within: tuple[slice, ...] | None = None,
) -> Path:
    """Render and write preview.png atomically (`within` as in `render_preview`)."""
    sheet = render_preview(volume, labels, caption, within=within)
    with atomic_path(path, overwrite) as tmp:
        sheet.save(tmp, format="PNG")
    return path
