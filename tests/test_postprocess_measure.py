"""summary.json's organ box in patient space: the exact LPS extent of the organ's voxels, on oblique grids too."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from medseg.io import Geometry, Volume
from medseg.postprocess.measure import organ_stats


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    oblique=st.booleans(),
    spacing=st.tuples(*[st.floats(0.5, 5.0)] * 3),
)
def test_the_lps_box_is_the_exact_extent_of_the_organ_voxels(seed: int, oblique: bool, spacing) -> None:
    rng = np.random.default_rng(seed)
    shape = (14, 12, 10)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[tuple(slice(a, a + n) for a, n in zip(rng.integers(0, 5, 3), rng.integers(2, 6, 3), strict=True))] = 1
    labels[tuple(rng.integers(0, s) for s in shape)] = 1  # a stray voxel somewhere else
    if oblique:
        direction = Rotation.from_rotvec(rng.normal(size=3) * 0.4).as_matrix()
    else:
        direction = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)[None, :]
    geometry = Geometry(shape=shape, spacing=spacing, origin=tuple(rng.normal(0, 100, 3)),
                        direction=tuple(map(tuple, direction)))  # fmt: skip
    volume = Volume(np.zeros(shape, dtype=np.int16), geometry)
    stats = organ_stats(labels, 1, volume)
    world = geometry.index_to_world(np.argwhere(labels == 1))
    assert np.allclose(stats["bbox_lps_mm"]["min"], world.min(0), atol=0.006)
    assert np.allclose(stats["bbox_lps_mm"]["max"], world.max(0), atol=0.006)
    within = tuple(slice(s.start, s.stop) for s in (slice(0, 14), slice(0, 12), slice(0, 10)))
    assert organ_stats(labels, 1, volume, within)["bbox_lps_mm"] == stats["bbox_lps_mm"]
