"""Clean-up of the network output: softmax, largest component and hole filling at model spacing (with the box
around the organ), and the same on the input grid inside that box."""

from __future__ import annotations

import numpy as np

from medseg.parallel import thread_map
from medseg.postprocess.components import fill_holes, largest_component
from medseg.postprocess.measure import bounding_box

MODEL_BOX_MARGIN = 2
# Organs that come as two separate bodies in one class: the clean-up keeps two components for them, not one.
PAIRED_ORGANS = frozenset({"kidney", "adrenal_gland", "lung"})


def components_per_class(labels: dict[int, str]) -> dict[int, int]:
    """{class value: components to keep} for a model's labels: 2 for paired organs, 1 otherwise."""
    return {c: 2 if name in PAIRED_ORGANS else 1 for c, name in labels.items() if c != 0}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Channel softmax of (C, ...) logits, in place."""
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


def model_space_cleanup(
    probs: np.ndarray, argmax: np.ndarray | None = None, keep: dict[int, int] | None = None
) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """Per class at model spacing: keep the largest component with its holes filled (probability 1 in the holes),
    zero the class beyond a one-voxel band around it; return the probabilities and the box around all classes.

    Each class works in its own box grown by two voxels (the same result as on the whole grid: a background region
    reaching beyond the class's box reaches the grown box's border, and the one-voxel band fits inside).
    `keep` gives the components to keep per class (`components_per_class`; default 1)."""
    labels = probs.argmax(axis=0) if argmax is None else argmax
    boxes = [b for b in thread_map(lambda c: _clean_model_class(probs, labels, c, keep), range(1, probs.shape[0]))
             if b is not None]  # fmt: skip
    if not boxes:
        return probs, None
    return probs, tuple(
        slice(max(min(b[a].start for b in boxes) - MODEL_BOX_MARGIN, 0),
              min(max(b[a].stop for b in boxes) + MODEL_BOX_MARGIN, labels.shape[a]))
        for a in range(labels.ndim)
    )  # fmt: skip


def _clean_model_class(
    probs: np.ndarray, labels: np.ndarray, c: int, keep: dict[int, int] | None
) -> tuple[slice, ...] | None:
    """`model_space_cleanup` for class `c` (writes `probs[c]` only, so classes can run on separate threads)."""
    from scipy import ndimage

    own = bounding_box(labels == c, margin=2)
    if own is None:
        probs[c] = 0.0
        return None
    crop = labels[own]
    mask = fill_holes(largest_component(crop == c, 1 if keep is None else keep.get(c, 1)))
    band = ndimage.binary_dilation(mask, iterations=1)
    kept = np.where(band, probs[c][own], np.float32(0.0)).astype(probs.dtype, copy=False)
    kept[mask & (crop != c)] = 1.0
    probs[c] = 0.0
    probs[c][own] = kept
    inner = bounding_box(band)
    return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(own, inner, strict=True))


def clean_class(crop: np.ndarray, c: int, keep: int = 1) -> None:
    """In place: class `c` of `crop` becomes its largest component (`keep` = 2: two, for paired organs), holes
    filled (holes take background only)."""
    mask = largest_component(crop == c, keep)
    mask = fill_holes(mask) & ((crop == 0) | mask)
    crop[crop == c] = 0
    crop[mask] = c


def input_grid_cleanup(
    labels: np.ndarray,
    box: tuple[slice, ...] | None,
    n_classes: int,
    classes: tuple[int, ...] | None = None,
    keep: dict[int, int] | None = None,
) -> np.ndarray:
    """Largest component and 3D hole filling per class, inside the organ box on the input grid.

    Each class works in its own box (grown by one voxel) within the organ box: the result is the same as on the
    whole organ box (a background region touching the class box's border reaches that box's border through voxels
    of no class, so it is no hole in either), at the cost of the class's extent, not of all organs' union.
    `classes` limits the clean-up to those classes (the others are not served); `keep` as in `model_space_cleanup`."""
    if box is None:
        return labels
    crop = labels[box]
    for c in range(1, n_classes) if classes is None else classes:
        own = bounding_box(crop == c, margin=1)
        if own is not None:
            clean_class(crop[own], c, 1 if keep is None else keep.get(c, 1))
    return labels
