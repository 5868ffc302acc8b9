"""Per-organ figures and renumbering computed inside the prediction's labelled box equal those on the whole grid."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medseg.infer.organs import renumber
from medseg.io import Geometry, Volume, VolumeMeta
from medseg.postprocess.measure import bounding_box, organ_stats

LABELS = {1: "liver", 2: "spleen", 3: "heart"}


def _volume(shape: tuple[int, int, int]) -> Volume:
    rng = np.random.default_rng(0)
    direction = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
    geometry = Geometry(shape=shape, spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.0, 30.0), direction=direction)
    return Volume(rng.integers(-1000, 1500, size=shape, dtype=np.int16), geometry, VolumeMeta())


def _box_holding_all(labels: np.ndarray, grow: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The labelled box grown by `grow` (clipped): any box holding every label must give the same answer."""
    box = bounding_box(labels > 0)
    if box is None:
        return None
    return tuple(
        slice(max(b.start - g, 0), min(b.stop + g, n)) for b, g, n in zip(box, grow, labels.shape, strict=True)
    )


@given(
    arrays(np.uint8, st.tuples(st.integers(3, 12), st.integers(3, 12), st.integers(2, 9)), elements=st.integers(0, 3)),
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    st.floats(0.0, 0.9),
)
@settings(max_examples=60, deadline=None)
def test_stats_and_renumbering_inside_the_labelled_box_equal_the_whole_grid(
    labels: np.ndarray, grow: tuple[int, int, int], blank: float
) -> None:
    labels = labels.copy()
    labels[: int(labels.shape[0] * blank)] = 0  # often a sub-box, sometimes nothing at all
    volume = _volume(labels.shape)
    box = _box_holding_all(labels, grow)
    for label in LABELS:
        assert organ_stats(labels, label, volume, box) == organ_stats(labels, label, volume)
    chosen = {3: "heart", 1: "liver"}
    out_box, names_box = renumber(labels, chosen, box)
    out, names = renumber(labels, chosen)
    assert names_box == names and np.array_equal(out_box, out)
