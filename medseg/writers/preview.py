"""preview.png: axial, coronal and sagittal slices through the organ with the mask outlined, for a glance check.

Slices are shown in the radiological convention (patient right on the image left, anterior up, head up),
whatever the stored orientation, with the true aspect ratio from the voxel spacing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.io import Geometry, Volume
from medseg.io.atomic import atomic_path
from medseg.postprocess.measure import centroid_index

TILE = 320
CAPTION_HEIGHT = 22
COLOURS = [(255, 64, 64), (64, 200, 255), (255, 220, 0), (120, 255, 120), (255, 120, 255)]


def _to_lps(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Flip/transpose an [i, j, k] array so its axes run along L, P, S; returns it with the matching spacing."""
    d = geometry.direction_matrix
    axes = [int(np.argmax(np.abs(d[:, c]))) for c in range(3)]
    if sorted(axes) != [0, 1, 2]:
        axes = [0, 1, 2]
    order = [axes.index(w) for w in range(3)]
    out = array.transpose(order)
    for w, c in enumerate(order):
        if d[w, c] < 0:
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


def _centre(mask: np.ndarray) -> np.ndarray:
    """Integer centroid of a mask (`postprocess.measure`), or the grid centre when empty."""
    centre = centroid_index(mask)
    return np.asarray(mask.shape) // 2 if centre is None else np.array([round(float(c)) for c in centre])


def render_preview(
    volume: Volume, labels: np.ndarray, caption: str = "", display_hu: tuple[float, float] = (-160.0, 240.0)
) -> object:
    """A PIL image with three orthogonal slices through the centroid of the labels (or the volume centre)."""
    from PIL import Image

    img, spacing = _to_lps(volume.array, volume.geometry)
    lab, _ = _to_lps(labels, volume.geometry)
    c = _centre(lab > 0)
    sx, sy, sz = spacing
    # axial: rows posterior-going (anterior up), cols L-going (patient right on the left)
    axial = (img[:, :, c[2]].T, lab[:, :, c[2]].T, (sy, sx))
    # coronal: rows inferior-going (head up), cols L-going
    coronal = (img[:, c[1], :].T[::-1], lab[:, c[1], :].T[::-1], (sz, sx))
    # sagittal: rows inferior-going, cols P-going (anterior on the left)
    sagittal = (img[c[0], :, :].T[::-1], lab[c[0], :, :].T[::-1], (sz, sy))
    tiles = [_tile(a, b, p, display_hu) for a, b, p in (axial, coronal, sagittal)]
    from PIL import ImageDraw

    top = CAPTION_HEIGHT if caption else 0
    height = max(t.height for t in tiles)
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), height + top))
    x = 0
    for t in tiles:
        sheet.paste(t, (x, top + (height - t.height) // 2))
        x += t.width + 8
    if caption:
        ImageDraw.Draw(sheet).text((6, 4), caption, fill=(255, 255, 255))
    return sheet


def write_preview(volume: Volume, labels: np.ndarray, path: Path, overwrite: bool = False, caption: str = "") -> Path:
    """Render and write preview.png atomically."""
    sheet = render_preview(volume, labels, caption)
    with atomic_path(path, overwrite) as tmp:
        sheet.save(tmp, format="PNG")
    return path
