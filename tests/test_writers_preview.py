"""The preview's slice choice: the centroid found inside the labelled box is exactly the centroid of the whole
label map reordered to L, P, S (what the preview computed before it was given the box), for any axis order and flip."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medseg.io import Geometry
from medseg.postprocess.measure import bounding_box, centroid_index
from medseg.writers.preview import _centre, _to_lps

DIRECTIONS = [
    tuple(tuple(float(sign[r] if perm[r] == c else 0.0) for c in range(3)) for r in range(3))
    for perm in itertools.permutations(range(3))
    for sign in itertools.product((1, -1), repeat=3)
]


def _reference(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    lab, _ = _to_lps(labels, geometry)
    centre = centroid_index(lab > 0)
    return np.asarray(lab.shape) // 2 if centre is None else np.array([round(float(c)) for c in centre])


@settings(max_examples=150, deadline=None)
@given(labels=arrays(np.uint8, st.tuples(*[st.integers(1, 12)] * 3), elements=st.sampled_from([0, 0, 0, 0, 1, 2])),
       direction=st.sampled_from(DIRECTIONS), margin=st.integers(0, 3))  # fmt: skip
def test_centre_inside_the_box_is_the_whole_grid_centre(labels, direction, margin) -> None:
    geometry = Geometry(labels.shape, (0.8, 0.7, 2.5), (0.0, 0.0, 0.0), direction)
    expected = _reference(labels, geometry)
    assert np.array_equal(_centre(labels, geometry), expected)
    box = bounding_box(labels > 0, margin=margin)
    assert np.array_equal(_centre(labels, geometry, box), expected)
