"""The model grid: the input reoriented to RAS and resampled to the model spacing, as MONAI does it.

`model_grid` reproduces MONAI `Orientation(axcodes="RAS")` + `Spacing(pixdim)` (shape and affine, see
`monai.data.utils.compute_shape_offset`) without importing MONAI (it takes ~10 s to import); a parity test
checks both against MONAI. Resampling goes straight from the input array to the model grid in one linear
interpolation pass, so no reoriented full-resolution copy is ever made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.io import Geometry

AFFINE_TOL = 1e-3


@dataclass(frozen=True)
class ModelGrid:
    """A voxel grid in RAS world space (MONAI convention): `affine_ras` maps (m0, m1, m2, 1) to RAS mm."""

    shape: tuple[int, int, int]
    affine_ras: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine_ras[:3, :3], axis=0))

    def index_map_from(self, geometry: Geometry) -> np.ndarray:
        """4x4 matrix mapping input voxel indices (i, j, k, 1) to continuous model-grid indices."""
        return np.linalg.solve(self.affine_ras, geometry.affine_ras)

    def index_map_to(self, geometry: Geometry) -> np.ndarray:
        """4x4 matrix mapping model-grid indices (m0, m1, m2, 1) to continuous input voxel indices."""
        return np.linalg.solve(geometry.affine_ras, self.affine_ras)


def ras_orientation(geometry: Geometry) -> tuple[tuple[int, int, int], np.ndarray]:
    """Oriented shape and RAS affine after MONAI `Orientation(axcodes="RAS")` (nibabel's io_orientation)."""
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    affine = geometry.affine_ras
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    shape = tuple(int(geometry.shape[int(a)]) for a in np.argsort(ornt[:, 0]))
    return shape, affine @ inv_ornt_aff(ornt, geometry.shape)


def _shape_offset(in_shape: tuple[int, ...], in_affine: np.ndarray, out_affine: np.ndarray) -> tuple[tuple, np.ndarray]:
    """MONAI `compute_shape_offset(scale_extent=False)`: output shape and world offset of the new grid."""
    shape = np.asarray(in_shape, dtype=float)
    corners = np.asarray(np.meshgrid(*[(0.0, d - 1.0) for d in shape], indexing="ij")).reshape(3, -1)
    corners = np.concatenate([corners, np.ones_like(corners[:1])])
    corners_out = np.linalg.solve(out_affine, in_affine) @ corners
    corners_world = in_affine @ corners
    all_dist = corners_out[:-1].copy()
    corners_out = corners_out[:-1] / corners_out[-1]
    out_shape = np.round(np.ptp(corners_out, axis=1) + 1.0)
    for i in range(corners_world.shape[1]):
        if np.allclose(np.min(all_dist - all_dist[:, i : i + 1], 1), 0.0, rtol=AFFINE_TOL):
            return tuple(int(s) for s in out_shape), corners_world[:-1, i]
    offset = in_affine[:-1, :-1] @ (shape / 2.0) + in_affine[:-1, -1] - out_affine[:-1, :-1] @ (out_shape / 2.0)
    return tuple(int(s) for s in out_shape), offset


def model_grid(geometry: Geometry, spacing: tuple[float, float, float]) -> ModelGrid:
    """The grid MONAI Orientation(RAS) + Spacing(pixdim=spacing) would produce for an input on `geometry`."""
    o_shape, o_affine = ras_orientation(geometry)
    rot = o_affine[:3, :3] / np.linalg.norm(o_affine[:3, :3], axis=0)
    new_affine = np.eye(4)
    new_affine[:3, :3] = rot * np.asarray(spacing, dtype=float)[None, :]
    new_affine[:3, 3] = o_affine[:3, 3]
    shape, offset = _shape_offset(o_shape, o_affine, new_affine)
    new_affine[:3, 3] = offset
    return ModelGrid(shape, new_affine)


def resample_to_grid(array: np.ndarray, geometry: Geometry, grid: ModelGrid, order: int = 1) -> np.ndarray:
    """Sample `array` (on `geometry`) at every model-grid voxel; outside the input the border value repeats."""
    from scipy.ndimage import affine_transform

    from medseg.preprocess.separable import resample_axis_aligned

    m = grid.index_map_to(geometry)
    fast = resample_axis_aligned(array, m, grid.shape) if order == 1 else None
    if fast is not None:
        return fast
    return affine_transform(
        np.asarray(array, dtype=np.float32),
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=grid.shape,
        order=order,
        mode="nearest",
        prefilter=False,
    )
