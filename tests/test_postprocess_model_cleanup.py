"""The model-spacing clean-up per class box gives exactly what the whole-grid version gives (it is only faster)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medseg.postprocess.cleanup import MODEL_BOX_MARGIN, model_space_cleanup, softmax
from medseg.postprocess.components import fill_holes, largest_component
from medseg.postprocess.measure import bounding_box


def _on_the_whole_grid(probs: np.ndarray, components: dict[int, int]) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """The reference: every class's component(s), holes and band computed on the whole model grid."""
    labels = probs.argmax(axis=0)
    union = np.zeros(labels.shape, dtype=bool)
    for c in range(1, probs.shape[0]):
        keep = fill_holes(largest_component(labels == c, components[c]))
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
    components = {c: int(rng.integers(1, 3)) for c in range(1, n_classes)}
    logits = ndimage.gaussian_filter(rng.normal(size=(n_classes, *shape)), sigma=(0, sigma, sigma, sigma)) * 10
    logits[0] += rng.uniform(0, 2)
    probs = softmax(logits.astype(np.float32))
    expected, expected_box = _on_the_whole_grid(probs.copy(), components)
    got, box = model_space_cleanup(probs.copy(), keep=components)
    assert box == expected_box
    assert np.array_equal(got, expected)


def test_an_absent_class_is_zeroed_and_no_box_without_foreground() -> None:
    probs = np.zeros((3, 8, 8, 8), np.float32)
    probs[0] = 0.9
    probs[1] = 0.06
    probs[2] = 0.04
    got, box = model_space_cleanup(probs)
    assert box is None and not got[1:].any() and np.all(got[0] == np.float32(0.9))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=0, max_size=5), keep=st.integers(1, 2))
def test_largest_component_keeps_the_largest_and_a_second_of_at_least_a_tenth(sizes: list[int], keep: int) -> None:
    """Separate bars of the given lengths: the largest is kept, with keep=2 also the next if >= 10 % of it."""
    mask = np.zeros((len(sizes) * 2 + 1, 3, 41), bool)
    for i, n in enumerate(sizes):
        mask[2 * i + 1, 1, :n] = True
    out = largest_component(mask, keep)
    kept = [n for i, n in enumerate(sizes) if out[2 * i + 1, 1, :n].all()]
    assert out.sum() == sum(kept) and not (out & ~mask).any()
    if not sizes:
        return
    ranked = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    expected = [sizes[ranked[0]]]
    if keep == 2 and len(sizes) > 1 and sizes[ranked[1]] >= 0.1 * sizes[ranked[0]]:
        expected.append(sizes[ranked[1]])
    assert sorted(kept) == sorted(expected)


def test_both_kidneys_survive_the_clean_up_of_a_paired_class() -> None:
    from medseg.postprocess.cleanup import components_per_class

    keep = components_per_class({0: "background", 1: "liver", 2: "kidney"})
    assert keep == {1: 1, 2: 2}
    probs = np.zeros((3, 30, 20, 20), np.float32)
    probs[0] = 1.0
    for x in (slice(3, 9), slice(20, 25)):  # two kidneys, the second smaller
        probs[2, x, 5:12, 5:12], probs[0, x, 5:12, 5:12] = 1.0, 0.0
    probs[1, 14:16, 15:17, 15:17], probs[0, 14:16, 15:17, 15:17] = 1.0, 0.0
    got, _ = model_space_cleanup(probs.copy(), keep=keep)
    assert got[2, 3:9, 5:12, 5:12].all() and got[2, 20:25, 5:12, 5:12].all()
    one, _ = model_space_cleanup(probs.copy())
    assert not one[2, 20:25, 5:12, 5:12].any()
