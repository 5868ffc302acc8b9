"""The input-grid clean-up per class box gives exactly what it gave on the whole organ box (it is only faster)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medseg.postprocess.cleanup import clean_class, input_grid_cleanup


def _on_the_whole_box(labels: np.ndarray, box: tuple[slice, ...], n_classes: int) -> np.ndarray:
    """The previous implementation: every class cleaned on the whole organ box."""
    for c in range(1, n_classes):
        clean_class(labels[box], c)
    return labels


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_classes=st.integers(2, 6), edge=st.booleans())
def test_per_class_boxes_equal_the_whole_box(seed: int, n_classes: int, edge: bool) -> None:
    rng = np.random.default_rng(seed)
    shape = (28, 24, 20)
    field = ndimage.gaussian_filter(rng.normal(size=(n_classes, *shape)), sigma=(0, 2, 2, 2))
    labels = field.argmax(axis=0).astype(np.uint8)
    labels[rng.random(shape) < 0.03] = 0  # pepper holes and splits
    box = (slice(0, 28), slice(0, 24), slice(0, 20)) if edge else (slice(3, 25), slice(2, 22), slice(1, 18))
    expected = _on_the_whole_box(labels.copy(), box, n_classes)
    assert np.array_equal(input_grid_cleanup(labels.copy(), box, n_classes), expected)


def test_a_hole_is_filled_and_a_stray_island_dropped() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[4:14, 4:14, 4:14] = 1
    labels[8, 8, 8] = 0
    labels[17, 17, 17] = 1
    labels[5:8, 15:18, 5:8] = 2
    out = input_grid_cleanup(labels.copy(), (slice(2, 20), slice(2, 20), slice(2, 20)), 3)
    assert out[8, 8, 8] == 1 and out[17, 17, 17] == 0 and (out == 2).sum() == 27
