"""The model-spacing clean-up per class box gives exactly what the whole-grid version gives (it is only faster)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medseg.postprocess.cleanup import MODEL_BOX_MARGIN, model_space_cleanup, softmax
from medseg.postprocess.components import fill_holes, largest_component
from medseg.postprocess.measure import bounding_box


def _on_the_whole_grid(probs: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """The reference: every class's component, holes and band computed on the whole model grid."""
    labels = probs.argmax(axis=0)
    union = np.zeros(labels.shape, dtype=bool)
    for c in range(1, probs.shape[0]):
        keep = fill_holes(largest_component(labels == c))
        probs[c][keep & (labels != c)] = 1.0
        band = ndimage.binary_dilation(keep, iterations=1)
        probs[c][~band] = 0.0
        union |= band
    return probs, bounding_box(union, margin=MODEL_BOX_MARGIN)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_classes=st.integers(2, 7), sigma=st.floats(0.8, 2.5),
       shape=st.tuples(st.integers(6, 30), st.integers(6, 30), st.integers(6, 30)))  # fmt: skip
def test_per_class_boxes_equal_the_whole_grid(seed: int, n_classes: int, sigma: float, shape: tuple) -> None:
    rng = np.random.default_rng(seed)
    logits = ndimage.gaussian_filter(rng.normal(size=(n_classes, *shape)), sigma=(0, sigma, sigma, sigma)) * 10
    logits[0] += rng.uniform(0, 2)
    probs = softmax(logits.astype(np.float32))
    expected, expected_box = _on_the_whole_grid(probs.copy())
    got, box = model_space_cleanup(probs.copy())
    assert box == expected_box
    assert np.array_equal(got, expected)


def test_an_absent_class_is_zeroed_and_no_box_without_foreground() -> None:
    probs = np.zeros((3, 8, 8, 8), np.float32)
    probs[0] = 0.9
    probs[1] = 0.06
    probs[2] = 0.04
    got, box = model_space_cleanup(probs)
    assert box is None and not got[1:].any() and np.all(got[0] == np.float32(0.9))
