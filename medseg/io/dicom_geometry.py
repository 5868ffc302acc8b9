"""Slice geometry: order slices along the slice normal and check the stack is a regular, untilted 3D grid.

Tolerances (documented in README "Imaging I/O"):
- same orientation: direction cosines equal within 1e-3 (about 0.06 degrees); cosines must be unit and orthogonal
  within 1e-3, and are re-orthonormalised.
- duplicate position: two slices closer than 0.01 mm along the normal.
- missing slice: a step larger than 1.5x the median step.
- regular spacing: every step within max(0.01 mm, 1 % of the mean step) of the mean step.
- gantry tilt / sheared stack: a slice position off the line origin + t * normal by more than 0.01 mm is rejected
  (resampling a tilted stack is left to dedicated tools; placing it as if untilted would misplace anatomy).
- physically plausible grid (checked per slice): PixelSpacing in [0.05, 20] mm, slice step in [0.05, 50] mm, and
  at most 3000 mm along any axis. Values outside (micrometres written as mm, a corrupt header) are refused; they
  would place anatomy wrongly or make the resampler allocate hundreds of GiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InvalidInputError
from medseg.io.volume import Geometry

ORIENTATION_TOL = 1e-3
DUPLICATE_TOL_MM = 0.01
GAP_FACTOR = 1.5
SPACING_TOL_MM = 0.01
SPACING_RTOL = 0.01
TILT_TOL_MM = 0.01
PIXEL_SPACING_RTOL = 1e-3
PIXEL_SPACING_RANGE_MM = (0.05, 20.0)
SLICE_STEP_RANGE_MM = (0.05, 50.0)
MAX_EXTENT_MM = 3000.0


@dataclass(frozen=True)
class FramePlane:
    """Where one 2D frame lies: its file (and frame index for multi-frame files) and its plane in LPS."""

    path: Path
    frame: int | None  # None for single-frame files
    position: np.ndarray  # ImagePositionPatient (3,)
    orientation: np.ndarray  # ImageOrientationPatient (6,): row cosine then column cosine
    pixel_spacing: np.ndarray  # PixelSpacing (2,): row spacing (between rows), column spacing (between columns)
    thickness: float | None = None

    def label(self) -> str:
        """File name (plus frame number for multi-frame files) for messages."""
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame + 1}"


@dataclass(frozen=True)
class Stack:
    """A checked, ordered slice stack: `order[k]` is the index into the input frames of slice k."""

    order: tuple[int, ...]
    geometry: Geometry
    notes: tuple[str, ...]
    thickness: float | None = None  # median SliceThickness of the frames, mm


def _axes(orientation: np.ndarray, where: str) -> np.ndarray:
    """Row cosine, column cosine and their normal as columns of a 3x3 matrix (re-orthonormalised)."""
    row, col = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > ORIENTATION_TOL
        or abs(np.linalg.norm(col) - 1) > ORIENTATION_TOL
        or abs(float(row @ col)) > ORIENTATION_TOL
    ):
        raise InvalidInputError(
            f"ImageOrientationPatient {np.round(orientation, 5).tolist()} is not two orthogonal unit vectors",
            path=where,
            hint="The header is corrupt; re-export the series from the scanner or PACS.",
        )
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return np.column_stack([row, col, np.cross(row, col)])


def _check_same_plane_type(frames: list[FramePlane], where: str) -> None:
    ref = frames[0]
    for f in frames[1:]:
        if np.max(np.abs(f.orientation - ref.orientation)) > ORIENTATION_TOL:
            raise InvalidInputError(
                f"mixed slice orientations: {ref.label()} has {np.round(ref.orientation, 4).tolist()} but "
                f"{f.label()} has {np.round(f.orientation, 4).tolist()}",
                path=where,
                hint="Remove the stray slices or pick one series with --series (see `medseg series`).",
            )
        if not np.allclose(f.pixel_spacing, ref.pixel_spacing, rtol=PIXEL_SPACING_RTOL):
            raise InvalidInputError(
                f"inconsistent pixel spacing: {ref.label()} has {ref.pixel_spacing.tolist()} mm but "
                f"{f.label()} has {f.pixel_spacing.tolist()} mm",
                path=where,
                hint="Pick one series with --series (see `medseg series`).",
            )


def build_stack(frames: list[FramePlane], shape_2d: tuple[int, int], where: str | Path) -> Stack:
    """Sort frames along the slice normal, check the grid, and return order + Geometry.

    `shape_2d` is (rows, columns). Raises InvalidInputError naming the problem and where it is.
    """
    where = str(where)
    if len(frames) < 2:
        raise InvalidInputError(
            f"only {len(frames)} slice; a 3D volume needs at least 2 slices",
            path=where,
            hint="Export the whole series, not a single image.",
        )
    _check_same_plane_type(frames, where)
    for f in frames:
        check_pixel_spacing(f.pixel_spacing, f.label(), where)
    axes = _axes(frames[0].orientation, where)
    normal = axes[:, 2]
    positions = np.stack([f.position for f in frames])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    steps = np.diff(along)
    labels = [frames[i].label() for i in order]
    _check_duplicates(steps, along, labels, where)
    median = float(np.median(steps))
    _check_gaps(steps, along, labels, median, where)
    mean = float((along[-1] - along[0]) / (len(along) - 1))
    _check_regular(steps, along, labels, mean, where)
    _check_tilt(positions, along, normal, labels, where)
    row_spacing, col_spacing = (float(v) for v in frames[0].pixel_spacing)
    rows, cols = shape_2d
    check_plausible_grid((cols, rows, len(frames)), (col_spacing, row_spacing, mean), where)
    try:
        geometry = Geometry(
            (cols, rows, len(frames)), (col_spacing, row_spacing, mean), tuple(positions[0]), tuple(map(tuple, axes))
        )
    except ValueError as exc:
        raise InvalidInputError(
            f"invalid image geometry ({exc})", path=where, hint="The header is corrupt; re-export the series."
        ) from exc
    thick = [f.thickness for f in frames if f.thickness]
    thickness = float(np.median(thick)) if thick else None
    return Stack(tuple(int(i) for i in order), geometry, tuple(_thickness_notes(thickness, mean)), thickness)


def check_pixel_spacing(spacing: np.ndarray, label: str, where: str | Path) -> None:
    """Refuse a slice whose PixelSpacing is outside the plausible range (PIXEL_SPACING_RANGE_MM)."""
    lo, hi = PIXEL_SPACING_RANGE_MM
    if not all(lo <= float(v) <= hi for v in spacing):
        raise InvalidInputError(
            f"PixelSpacing {[round(float(v), 6) for v in spacing]} mm of {label} is outside the plausible "
            f"{lo:g}-{hi:g} mm (micrometres written as mm, or a corrupt header)",
            path=where,
            hint="Correct the header or re-export the series.",
        )


def check_plausible_grid(shape: tuple[int, ...], spacing: tuple[float, ...], where: str | Path) -> None:
    """Refuse a grid whose slice step or extent is physically implausible (bounds in the module docstring)."""
    lo, hi = SLICE_STEP_RANGE_MM
    step = float(spacing[2])
    if not lo <= step <= hi:
        raise InvalidInputError(
            f"slice step {step:.6g} mm is outside the plausible {lo:g}-{hi:g} mm "
            "(ImagePositionPatient in the wrong unit, or a corrupt header)",
            path=where,
            hint="Correct the header or re-export the series.",
        )
    extent = [n * s for n, s in zip(shape, spacing, strict=True)]
    if max(extent) > MAX_EXTENT_MM:
        raise InvalidInputError(
            f"the image spans {max(extent):.0f} mm along one axis (more than {MAX_EXTENT_MM:g} mm): "
            "spacing in the wrong unit, or a corrupt header",
            path=where,
            hint="Correct the header or re-export the series.",
        )


def _check_duplicates(steps: np.ndarray, along: np.ndarray, labels: list[str], where: str) -> None:
    dup = np.flatnonzero(steps < DUPLICATE_TOL_MM)
    if dup.size:
        k = int(dup[0])
        raise InvalidInputError(
            f"{dup.size} duplicate slice position(s), first at {along[k]:.3f} mm along the slice normal "
            f"({labels[k]} and {labels[k + 1]}); several acquisitions or phases may be mixed in one series",
            path=where,
            hint="Export one acquisition per folder (`medseg series` lists what the folder holds).",
        )


def _check_gaps(steps: np.ndarray, along: np.ndarray, labels: list[str], median: float, where: str) -> None:
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        k = int(gaps[0])
        missing = round(steps[k] / median) - 1
        raise InvalidInputError(
            f"missing slice(s): gap of {steps[k]:.3f} mm (about {missing} slice(s)) between positions "
            f"{along[k]:.3f} and {along[k + 1]:.3f} mm along the slice normal ({labels[k]} and {labels[k + 1]}, "
            f"slices {k} and {k + 1} of {len(along)} in position order) where the spacing is {median:.3f} mm"
            + (f"; {gaps.size} gaps in all" if gaps.size > 1 else ""),
            path=where,
            hint="Re-export the complete series from the scanner or PACS.",
        )


def on_grid_tolerance_mm(spacing: float) -> float:
    """How far a slice may sit from its place on the regular grid the volume is built on: a tenth of the spacing
    (never under SPACING_TOL_MM). The reader refuses more; the SEG writer accepts up to it, so a series read is
    a series whose SEG can be written."""
    return max(SPACING_TOL_MM, 0.1 * spacing)


def _check_regular(steps: np.ndarray, along: np.ndarray, labels: list[str], mean: float, where: str) -> None:
    tol = max(SPACING_TOL_MM, SPACING_RTOL * mean)
    bad = np.flatnonzero(np.abs(steps - mean) > tol)
    if bad.size:
        k = int(bad[np.argmax(np.abs(steps[bad] - mean))])
        raise InvalidInputError(
            f"inconsistent slice spacing: steps range from {steps.min():.3f} to {steps.max():.3f} mm "
            f"(mean {mean:.3f} mm, tolerance {tol:.3f} mm); worst step {steps[k]:.3f} mm between positions "
            f"{along[k]:.3f} and {along[k + 1]:.3f} mm ({labels[k]} and {labels[k + 1]})",
            path=where,
            hint="Resample the series to regular spacing with a dedicated tool, or re-export it.",
        )
    off = np.abs(along - (along[0] + mean * np.arange(len(along))))
    if off.max() > on_grid_tolerance_mm(mean):  # steps each within tolerance, adding up to a drift
        k = int(np.argmax(off))
        raise InvalidInputError(
            f"slice positions drift off a regular grid: {labels[k]} is {off[k]:.3f} mm from its place at the mean "
            f"spacing {mean:.3f} mm (tolerance {on_grid_tolerance_mm(mean):.3f} mm)",
            path=where,
            hint="Resample the series to regular spacing with a dedicated tool, or re-export it.",
        )


def _check_tilt(positions: np.ndarray, along: np.ndarray, normal: np.ndarray, labels: list[str], where: str) -> None:
    ideal = positions[0] + np.outer(along - along[0], normal)
    off = np.linalg.norm(positions - ideal, axis=1)
    k = int(np.argmax(off))
    if off[k] > TILT_TOL_MM:
        travel = np.linalg.norm(positions[k] - positions[0])
        angle = np.degrees(np.arcsin(min(1.0, off[k] / travel))) if travel > 0 else 90.0
        raise InvalidInputError(
            f"gantry tilt or sheared stack: slice positions are not along the slice normal ({labels[k]} is "
            f"{off[k]:.2f} mm off, about {angle:.1f} degrees); medseg does not resample tilted series",
            path=where,
            hint="Use a tilt-corrected reconstruction from the scanner, or resample it (e.g. dcm2niix) first.",
        )


def _thickness_notes(t: float | None, spacing: float) -> list[str]:
    if t is None:
        return []
    if t > spacing + max(SPACING_TOL_MM, SPACING_RTOL * spacing):
        return [f"SliceThickness {t:.4g} mm > slice spacing {spacing:.4g} mm (overlapping slices)"]
    if t < spacing - max(SPACING_TOL_MM, SPACING_RTOL * spacing):
        return [f"SliceThickness {t:.4g} mm < slice spacing {spacing:.4g} mm (gaps between slices)"]
    return []
