"""Sliding-window inference with Gaussian blending, numerically matching MONAI `sliding_window_inference`.

Re-implemented in numpy so the fast path never imports MONAI (~10 s); window placement
(`dense_patch_slices`), zero padding of small inputs and the Gaussian importance map (sigma = 0.125 * roi)
follow MONAI exactly, which a parity test checks. Windows can be restricted to a region (e.g. the body), and
windows whose input is constant (air, padding) reuse one cached prediction per value when asked, which is exact:
the same input gives the same output wherever the window lies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from medseg.parallel import Mapper, array_threads

Network = Callable[[np.ndarray], np.ndarray]
"""What the sliding window runs: a (B, 1, *roi) float32 batch in, (B, C, *roi) logits out. A loaded model
(`infer.runtime.Runner`) is one; tests pass plain functions. The logits may be the network's own buffer, valid until
its next call (OpenVINO): the sliding window blends them (scaling them in place) before the next call."""


@dataclass
class WindowStats:
    """How many windows were planned, run and skipped (for the summary and the bench)."""

    planned: int = 0
    run: int = 0
    skipped: int = 0


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices along one axis, as MONAI `_get_scan_interval` + `dense_patch_slices` compute them."""
    size = max(size, roi)
    interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    num = math.ceil(size / interval)
    scan = next((d for d in range(num) if d * interval + roi >= size), None)
    count = scan + 1 if scan is not None else 1
    return [i * interval - max(i * interval + roi - size, 0) for i in range(count)]


def gaussian_importance(roi: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's Gaussian importance map (peak 1, clamped below at its minimum or 1e-3)."""
    out = np.ones((), dtype=np.float32)
    for r in roi:
        x = np.arange(-(r - 1) / 2.0, (r - 1) / 2.0 + 1, dtype=np.float32)
        g = np.exp(x**2 / np.float32(-2 * (r * sigma_scale) ** 2)).astype(np.float32)
        out = out[..., None] * g
    return np.maximum(out, max(float(out.min()), 1e-3)).astype(np.float32)


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _blend(
    run: Mapper,
    acc: np.ndarray,
    norm: np.ndarray,
    weight: np.ndarray,
    logits: np.ndarray,
    sl: tuple[slice, ...],
    weighted: bool = False,
) -> None:
    """acc += logits * weight and norm += weight over one window; the channels are separate tasks for `run`, so
    each voxel sees the same operations as in one array step (bit-identical on one thread or two)."""
    if not (weighted or logits.flags.writeable):
        logits = logits.copy()

    def channel(c: int) -> None:
        scaled = logits[c] if weighted else np.multiply(logits[c], weight, out=logits[c])
        acc[(c, *sl)] += scaled

    run(channel, range(len(logits)))
    norm[sl] += weight


def sliding_window(
    image: np.ndarray,
    network: Network,
    roi: tuple[int, int, int],
    out_channels: int,
    batch_size: int = 1,
    overlap: float = 0.25,
    skip_constant: bool = False,
    stats: WindowStats | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Blend `network` outputs over windows of `image` (I, J, K); returns (C, I, J, K) float32 blended outputs.

    `network` takes a (B, 1, *roi) float32 batch and returns (B, C, *roi); B is always `batch_size` (the last
    batch is padded with zeros), so fixed-shape compiled models can be used.
    """
    shape = image.shape
    pad = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for r, s in zip(roi, shape, strict=True)]
    padded = np.pad(image, pad) if any(p != (0, 0) for p in pad) else image
    starts = [window_starts(s, r, overlap) for s, r in zip(padded.shape, roi, strict=True)]
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    weight = gaussian_importance(roi)
    acc = np.zeros((out_channels, *padded.shape), dtype=np.float32)
    norm = np.zeros(padded.shape, dtype=np.float32)
    stats = stats if stats is not None else WindowStats()
    stats.planned += len(corners)
    with array_threads() as run:
        blend = partial(_blend, run, acc, norm, weight)
        todo = []
        constant: dict[float, np.ndarray] = {}
        for c in corners:
            sl = tuple(slice(s, s + r) for s, r in zip(c, roi, strict=True))
            patch = padded[sl]
            lo = float(patch.min())
            if skip_constant and lo == float(patch.max()):
                if lo not in constant:
                    constant[lo] = network(np.full((batch_size, 1, *roi), lo, dtype=np.float32))[0] * weight
                    stats.run += 1
                blend(constant[lo], sl, weighted=True)
                stats.skipped += 1
                continue
            todo.append(sl)
        done = 0
        for group in _batches(todo, batch_size):
            batch = np.zeros((batch_size, 1, *roi), dtype=np.float32)
            for b, sl in enumerate(group):
                batch[b, 0] = padded[sl]
            out = network(batch)
            for b, sl in enumerate(group):
                blend(out[b], sl)
            done += len(group)
            stats.run += len(group)
            if progress is not None:
                progress(done, len(todo))
        run(lambda c: np.divide(acc[c], norm, out=acc[c]), range(out_channels))
    crop = tuple(slice(p[0], p[0] + s) for p, s in zip(pad, shape, strict=True))
    return acc[(slice(None), *crop)]
