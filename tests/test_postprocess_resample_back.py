"""Labels on the input grid: interpolating each class only inside its own box gives the plain argmax of every class
interpolated on the whole box, and serving some classes gives exactly their labels (it is only faster)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medseg.io import Geometry
from medseg.postprocess import input_box, labels_on_input_grid, sample_crop
from medseg.postprocess.cleanup import input_grid_cleanup, model_space_cleanup, softmax
from medseg.preprocess import model_grid

PERMUTATIONS = ((0, 1, 2), (1, 0, 2), (0, 2, 1))


def _plain_argmax(probs: np.ndarray, model_affine: np.ndarray, geometry: Geometry, model_box) -> tuple:
    """The reference: every class interpolated on the whole box, then argmax (first class wins ties)."""
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    model_to_input = np.linalg.solve(geometry.affine_ras, model_affine)
    box = input_box(model_box, model_to_input, geometry.shape)
    stack = np.stack([sample_crop(p, np.linalg.inv(model_to_input), box) for p in probs])
    labels[box] = stack.argmax(axis=0)
    return labels, box


def _case(seed: int, n_classes: int, perm: int, flip: bool) -> tuple[np.ndarray, np.ndarray, Geometry, tuple]:
    """Random smooth class probabilities on the model grid of a random input geometry, cleaned as inference does."""
    rng = np.random.default_rng(seed)
    direction = np.eye(3)[:, PERMUTATIONS[perm]] * (np.array([-1.0, 1.0, 1.0]) if flip else 1.0)
    geometry = Geometry(
        shape=tuple(int(v) for v in rng.integers(18, 34, size=3)),
        spacing=tuple(float(v) for v in rng.uniform(0.6, 2.5, size=3)),
        origin=tuple(float(v) for v in rng.uniform(-50, 50, size=3)),
        direction=tuple(map(tuple, direction)),
    )
    grid = model_grid(geometry, (2.0, 2.0, 2.0))
    logits = ndimage.gaussian_filter(rng.normal(size=(n_classes, *grid.shape)), sigma=(0, 1.5, 1.5, 1.5)) * 8
    logits[0] += rng.uniform(0.0, 1.5)
    probs, model_box = model_space_cleanup(softmax(logits.astype(np.float32)))
    return probs, grid.affine_ras, geometry, model_box


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_classes=st.integers(3, 7), perm=st.integers(0, 2), flip=st.booleans())
def test_per_class_boxes_give_the_plain_argmax(seed: int, n_classes: int, perm: int, flip: bool) -> None:
    probs, affine, geometry, model_box = _case(seed, n_classes, perm, flip)
    if model_box is None:
        return
    expected, _ = _plain_argmax(probs, affine, geometry, model_box)
    labels, region = labels_on_input_grid(probs, affine, geometry, model_box)
    assert np.array_equal(labels, expected)
    if region is not None:
        outside = np.ones(geometry.shape, bool)
        outside[region] = False
        assert not labels[outside].any()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_classes=st.integers(3, 7), perm=st.integers(0, 2), flip=st.booleans(),
       data=st.data())  # fmt: skip
def test_serving_some_classes_gives_exactly_their_cleaned_labels(
    seed: int, n_classes: int, perm: int, flip: bool, data: st.DataObject
) -> None:
    probs, affine, geometry, model_box = _case(seed, n_classes, perm, flip)
    if model_box is None:
        return
    served = tuple(data.draw(st.lists(st.integers(1, n_classes - 1), min_size=1, max_size=2, unique=True)))
    full, box = _plain_argmax(probs, affine, geometry, model_box)
    full = input_grid_cleanup(full, box, n_classes)
    labels, region = labels_on_input_grid(probs, affine, geometry, model_box, served)
    labels = input_grid_cleanup(labels, region, n_classes, served)
    for c in served:
        assert np.array_equal(labels == c, full == c), f"class {c} of {served}"


def test_a_class_touching_the_model_grid_edge_is_interpolated_up_to_the_input_edge() -> None:
    geometry = Geometry(shape=(20, 20, 20), spacing=(0.7, 0.7, 0.7), origin=(0.0, 0.0, 0.0))
    grid = model_grid(geometry, (3.0, 3.0, 3.0))
    probs = np.zeros((3, *grid.shape), np.float32)
    probs[0] = 1.0
    probs[:, 0] = np.array([0.0, 0.2, 0.8], np.float32)[:, None, None]  # class 2 wins on the first model slice
    box = tuple(slice(0, n) for n in grid.shape)
    labels, _ = labels_on_input_grid(probs, grid.affine_ras, geometry, box)
    expected, _ = _plain_argmax(probs, grid.affine_ras, geometry, box)
    assert (expected == 2).any() and np.array_equal(labels, expected)


def test_a_class_wins_up_to_a_model_voxel_beyond_its_last_non_zero_voxel() -> None:
    """Linear interpolation carries a class almost one model voxel past its last voxel: its box must cover that."""
    geometry = Geometry(shape=(40, 40, 40), spacing=(0.5, 0.5, 0.5), origin=(0.0, 0.0, 0.0))
    grid = model_grid(geometry, (3.0, 3.0, 3.0))
    probs = np.zeros((3, *grid.shape), np.float32)
    probs[0] = 0.05
    probs[1, 2:4, 2:4, 2:4] = 0.95
    box = tuple(slice(0, n) for n in grid.shape)
    labels, _ = labels_on_input_grid(probs, grid.affine_ras, geometry, box)
    expected, _ = _plain_argmax(probs, grid.affine_ras, geometry, box)
    assert np.array_equal(labels, expected)
