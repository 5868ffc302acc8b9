"""The in-memory image type: voxels plus exact geometry, shared by every stage of medseg.

Conventions (the same as SimpleITK/ITK and DICOM):
- `array` is indexed `[i, j, k]`: i along image columns, j along rows, k along slices.
- World coordinates are DICOM patient coordinates (LPS, millimetres).
- `direction` is a 3x3 matrix whose *columns* are the unit vectors of the i, j, k axes in LPS.
- The centre of voxel (i, j, k) lies at `origin + direction @ (spacing * [i, j, k])`.
NIfTI stores RAS affines; `Geometry.affine_ras` / `Geometry.from_affine_ras` convert exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk
    from monai.data import MetaTensor

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in patient space: shape, spacing (mm), origin (mm, LPS) and axis directions."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) < 1 for s in self.shape):
            raise ValueError(f"shape must be three positive sizes, got {self.shape}")
        if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive finite values, got {self.spacing}")
        d = np.asarray(self.direction, dtype=float)
        if d.shape != (3, 3) or not np.allclose(np.abs(np.linalg.det(d)), 1.0, atol=1e-4):
            raise ValueError(f"direction must be a 3x3 orthonormal matrix, got {self.direction}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in row) for row in d))

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 array; column c is the LPS unit vector of index axis c."""
        return np.asarray(self.direction, dtype=float)

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to RAS millimetres, as NIfTI and MONAI expect."""
        return LPS_TO_RAS @ self.affine_lps

    @classmethod
    def from_affine_ras(cls, affine: np.ndarray, shape: tuple[int, int, int]) -> Geometry:
        """Build a geometry from a NIfTI-style RAS affine (shear is rejected, not silently dropped)."""
        lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
        m = lps[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        if not np.all(np.isfinite(lps[:3, :])) or np.any(spacing <= 0):
            raise ValueError("affine has a zero-length or non-finite axis (voxel size 0 or undefined)")
        direction = m / spacing[None, :]
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise ValueError("affine has shear; medseg needs an orthogonal voxel grid")
        return cls(tuple(shape), tuple(spacing), tuple(lps[:3, 3]), tuple(map(tuple, direction)))

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Map an (N, 3) array of voxel indices to (N, 3) LPS coordinates in mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Map an (N, 3) array of LPS coordinates to continuous voxel indices."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        return (xyz - np.asarray(self.origin)) @ np.linalg.inv(self.affine_lps[:3, :3]).T

    def corners(self) -> np.ndarray:
        """World coordinates (8, 3) of the centres of the eight corner voxels."""
        s = np.asarray(self.shape) - 1
        idx = np.array([[i, j, k] for i in (0, s[0]) for j in (0, s[1]) for k in (0, s[2])])
        return self.index_to_world(idx)

    def max_deviation_mm(self, other: Geometry) -> float:
        """Largest distance between corresponding corner voxels of two equal-shape grids (inf if shapes differ)."""
        if self.shape != other.shape:
            return float("inf")
        return float(np.max(np.linalg.norm(self.corners() - other.corners(), axis=1)))

    def same_grid(self, other: Geometry, tol_mm: float = 1e-3) -> bool:
        """True when both grids put every voxel at the same world position (within tol_mm)."""
        return self.max_deviation_mm(other) <= tol_mm

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0


@dataclass(frozen=True)
class SourceSlice:
    """What a SEG needs of one source slice, kept from the header read so the writer never re-reads it."""

    sop_class_uid: str
    sop_instance_uid: str
    position: str  # ImagePositionPatient as written in the file (x\\y\\z), so a SEG copies it verbatim
    orientation: str  # ImageOrientationPatient as written in the file


@dataclass(frozen=True)
class VolumeMeta:
    """What is known about where a volume came from; no pixel data, and PHI only in `source_files` paths."""

    modality: str | None = None
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    series_description: str | None = None
    source_format: str = "unknown"  # "dicom" | "nifti" | "generated"
    source_files: tuple[Path, ...] = ()  # DICOM files in slice order (k = 0 first)
    notes: tuple[str, ...] = ()  # warnings found while reading (e.g. "slice thickness 3.2 > spacing 2.0")
    extra: dict[str, Any] = field(default_factory=dict)
    source_slices: tuple[SourceSlice, ...] = field(default=(), repr=False, compare=False)  # per k, single-frame DICOM


@dataclass(frozen=True)
class Volume:
    """A 3D image: `array[i, j, k]` with its `Geometry` and `VolumeMeta`. Intensities are in real units (HU for CT)."""

    array: np.ndarray
    geometry: Geometry
    meta: VolumeMeta = field(default_factory=VolumeMeta)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D, got shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(f"array shape {self.array.shape} != geometry shape {self.geometry.shape}")

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
        meta: VolumeMeta | None = None,
    ) -> Volume:
        """Wrap an [i, j, k] array with the given geometry."""
        d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
        geom = Geometry(tuple(array.shape), tuple(spacing), tuple(origin), tuple(map(tuple, d)))
        return cls(array, geom, meta or VolumeMeta())

    def with_array(self, array: np.ndarray, **meta_changes: Any) -> Volume:
        """Same grid, new voxels (e.g. a label map on the input grid)."""
        return Volume(array, self.geometry, replace(self.meta, **meta_changes) if meta_changes else self.meta)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    def to_sitk(self) -> sitk.Image:
        """Convert to a SimpleITK image (copy; ITK stores arrays as [k, j, i])."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array.transpose(2, 1, 0)))
        img.SetSpacing(self.geometry.spacing)
        img.SetOrigin(self.geometry.origin)
        img.SetDirection(tuple(self.geometry.direction_matrix.flatten()))
        return img

    @classmethod
    def from_sitk(cls, image: sitk.Image, meta: VolumeMeta | None = None) -> Volume:
        """Convert a 3D SimpleITK image."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
        return cls.from_array(arr, image.GetSpacing(), image.GetOrigin(), d, meta)

    def to_metatensor(self) -> MetaTensor:
        """Channel-first MONAI MetaTensor (1, I, J, K) with the RAS affine MONAI expects."""
        import torch

        from medseg.monai_import import import_monai

        import_monai()
        from monai.data import MetaTensor

        return MetaTensor(
            torch.as_tensor(np.ascontiguousarray(self.array))[None],
            affine=torch.as_tensor(self.geometry.affine_ras, dtype=torch.float64),
        )
