"""Geometry of the Volume type: affines, SimpleITK and MONAI conversions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from medseg.io import Geometry, Volume

rotations = st.integers(0, 2**31 - 1).map(lambda s: Rotation.random(random_state=s).as_matrix())
spacings = st.tuples(*[st.floats(0.2, 6.0)] * 3)
origins = st.tuples(*[st.floats(-500, 500)] * 3)


@given(rotations, spacings, origins)
@settings(max_examples=50, deadline=None)
def test_ras_affine_round_trip(direction: np.ndarray, spacing: tuple, origin: tuple) -> None:
    g = Geometry((4, 5, 6), spacing, origin, tuple(map(tuple, direction)))
    back = Geometry.from_affine_ras(g.affine_ras, g.shape)
    assert g.max_deviation_mm(back) < 1e-6


@given(rotations, spacings, origins)
@settings(max_examples=25, deadline=None)
def test_sitk_round_trip_places_voxels_identically(direction: np.ndarray, spacing: tuple, origin: tuple) -> None:
    import SimpleITK as sitk

    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    vol = Volume.from_array(arr, spacing, origin, direction)
    img = vol.to_sitk()
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        assert np.allclose(img.TransformIndexToPhysicalPoint(ijk), vol.geometry.index_to_world(ijk)[0], atol=1e-6)
        assert img[ijk] == arr[ijk]
    back = Volume.from_sitk(img)
    assert np.array_equal(back.array, arr)
    assert back.geometry.max_deviation_mm(vol.geometry) < 1e-6
    assert isinstance(img, sitk.Image)


def test_metatensor_uses_ras_affine() -> None:
    vol = Volume.from_array(np.zeros((2, 3, 4), np.float32), (0.5, 0.7, 2.0), (10.0, -20.0, 30.0))
    mt = vol.to_metatensor()
    assert tuple(mt.shape) == (1, 2, 3, 4)
    assert np.allclose(mt.affine.numpy(), vol.geometry.affine_ras)
    assert np.allclose(vol.geometry.affine_ras[:3, 3], (-10.0, 20.0, 30.0))


def test_invalid_geometry_is_rejected() -> None:
    with pytest.raises(ValueError, match="spacing"):
        Geometry((2, 2, 2), (1.0, 0.0, 1.0), (0, 0, 0))
    with pytest.raises(ValueError, match="shape"):
        Volume(np.zeros((2, 2, 2)), Geometry((2, 2, 3), (1, 1, 1), (0, 0, 0)))
