"""Property tests on generated DICOM series: order, names, orientation and spacing never change where voxels land."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from dicom_factory import write_series
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from medseg.io import read_image, read_nifti, write_nifti
from medseg.io.volume import Geometry, Volume

TOL_MM = 1e-3
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)

shapes = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 6))
spacings = st.tuples(*[st.floats(0.2, 6.0, allow_nan=False) for _ in range(3)])
origins = st.tuples(*[st.floats(-500.0, 500.0, allow_nan=False) for _ in range(3)])
quaternions = st.tuples(*[st.floats(-1.0, 1.0, allow_nan=False) for _ in range(4)]).filter(
    lambda q: np.linalg.norm(q) > 0.2
)
flips = st.tuples(st.booleans(), st.booleans(), st.booleans())


def direction_from(quat: tuple[float, ...], flip: tuple[bool, bool, bool]) -> np.ndarray:
    """A rotation, with any axes negated (so left-handed grids are covered too)."""
    return Rotation.from_quat(quat).as_matrix() * np.where(flip, -1.0, 1.0)[None, :]


def assert_world_equal(vol: Volume, geometry: Geometry, values: np.ndarray) -> None:
    """Every expected voxel exists in `vol` at the same world position (< 0.001 mm) with the same value."""
    ijk = np.indices(geometry.shape).reshape(3, -1).T
    world = geometry.index_to_world(ijk)
    found = np.round(vol.geometry.world_to_index(world)).astype(int)
    assert (found >= 0).all() and (found < np.array(vol.shape)).all()
    assert np.max(np.linalg.norm(vol.geometry.index_to_world(found) - world, axis=1)) < TOL_MM
    np.testing.assert_array_equal(vol.array[tuple(found.T)], values[tuple(ijk.T)])


@PROPERTY_SETTINGS
@given(shape=shapes, data=st.data())
def test_slice_order_and_file_names_do_not_matter(shape: tuple[int, int, int], data: st.DataObject) -> None:
    stored = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    k = shape[2]
    order = data.draw(st.permutations(range(k)))
    names = data.draw(
        st.lists(st.text("abcXYZ019_-.", min_size=1, max_size=12), min_size=k, max_size=k, unique=True).filter(
            lambda ns: all(n not in (".", "..") for n in ns)
        )
    )
    geometry = Geometry(shape, (0.7, 0.8, 2.5), (-10.0, 20.0, -300.0))
    with tempfile.TemporaryDirectory() as tmp:
        write_series(Path(tmp), stored, geometry.spacing, geometry.origin, np.eye(3), names=names, write_order=order)
        vol = read_image(Path(tmp))
    assert vol.geometry.same_grid(geometry, TOL_MM)
    np.testing.assert_array_equal(vol.array, stored.astype(np.int32) - 1024)
    assert [p.name for p in vol.meta.source_files] == list(names)


@PROPERTY_SETTINGS
@given(shape=shapes, spacing=spacings, origin=origins, quat=quaternions, flip=flips)
def test_any_orientation_and_spacing_survives_dicom_to_nifti_round_trip(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    quat: tuple[float, ...],
    flip: tuple[bool, bool, bool],
) -> None:
    direction = direction_from(quat, flip)
    geometry = Geometry(shape, spacing, origin, tuple(map(tuple, direction)))
    stored = np.random.default_rng(0).integers(-1000, 3000, size=shape, dtype=np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        write_series(Path(tmp) / "dcm", stored, spacing, origin, direction)
        vol = read_image(Path(tmp) / "dcm")
        assert np.linalg.det(vol.geometry.direction_matrix) > 0, "k must follow row x column"
        assert_world_equal(vol, geometry, stored.astype(np.int32) - 1024)
        back = read_nifti(write_nifti(vol, Path(tmp) / "v.nii.gz"))
    assert back.geometry.same_grid(vol.geometry, TOL_MM)
    np.testing.assert_array_equal(back.array, vol.array)
    assert_world_equal(back, geometry, stored.astype(np.int32) - 1024)


@PROPERTY_SETTINGS
@given(n=st.integers(5, 9), data=st.data(), spacing=st.floats(0.5, 5.0), quat=quaternions)
def test_any_removed_interior_slice_is_reported_where_it_is(
    n: int, data: st.DataObject, spacing: float, quat: tuple[float, ...]
) -> None:
    """With at least 3 regular steps left the median is the true spacing (with 2 steps, [s, 2s] is ambiguous and
    is reported as inconsistent spacing instead)."""
    from medseg.errors import InvalidInputError

    gone = data.draw(st.integers(1, n - 2))
    direction = direction_from(quat, (False, False, False))
    stored = np.zeros((3, 3, n), dtype=np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_series(Path(tmp), stored, (1.0, 1.0, spacing), (0.0, 0.0, 0.0), direction)
        paths[gone].unlink()
        try:
            read_image(Path(tmp))
        except InvalidInputError as exc:
            message = exc.one_line()
        else:
            raise AssertionError("a missing slice was not detected")
    assert "missing slice" in message
    assert f"{(gone - 1) * spacing:.3f} and {(gone + 1) * spacing:.3f} mm" in message
    assert paths[gone - 1].name in message and paths[gone + 1].name in message


@PROPERTY_SETTINGS
@given(angle=st.floats(0.2, 30.0), quat=quaternions, spacing=st.floats(0.5, 5.0))
def test_tilted_stacks_are_always_rejected(angle: float, quat: tuple[float, ...], spacing: float) -> None:
    """Slices stepping off the slice normal (gantry tilt) by more than the 0.01 mm tolerance are never read as an
    untilted grid (smaller drifts misplace no voxel by more than the tolerance)."""
    from medseg.errors import InvalidInputError

    assume(3 * spacing * np.sin(np.radians(angle)) > 0.015)
    direction = direction_from(quat, (False, False, False))
    tilt = np.cos(np.radians(angle)) * direction[:, 2] + np.sin(np.radians(angle)) * direction[:, 1]
    tilted = np.column_stack([direction[:, 0], direction[:, 1], tilt])
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_series(Path(tmp), np.zeros((3, 3, 4), dtype=np.int16), (1.0, 1.0, spacing), (0, 0, 0), tilted)
        assert len(paths) == 4
        try:
            read_image(Path(tmp))
        except InvalidInputError as exc:
            assert "gantry tilt" in exc.one_line()
        else:
            raise AssertionError(f"a {angle:.2f} degree tilt was not detected")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_corruption_never_crashes_the_reader(shared: Path, data: st.DataObject) -> None:
    """Garbage anywhere in a file of a real series gives a volume or a MedsegError, never another exception."""
    import shutil

    from medseg.errors import MedsegError

    src = shared / "dicom/seg/dcmqi/segmentations/23x38x3/image"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ct"
        shutil.copytree(src, folder)
        victim = sorted(folder.iterdir())[data.draw(st.integers(0, 2))]
        raw = bytearray(victim.read_bytes())
        start = data.draw(st.integers(0, len(raw) - 1))
        junk = data.draw(st.binary(min_size=1, max_size=64))
        if data.draw(st.booleans()):
            raw[start : start + len(junk)] = junk
        else:
            del raw[start:]
        victim.write_bytes(bytes(raw))
        try:
            vol = read_image(folder)
        except MedsegError:
            return
        assert vol.shape[:2] == (23, 38)
