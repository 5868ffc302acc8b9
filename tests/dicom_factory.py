"""Generate small, valid DICOM series with pydicom (for property and fault tests; real files are used elsewhere)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds


def ds_values(values: Sequence[float]) -> list[str]:
    """Floats as valid DS strings (at most 16 characters)."""
    return [format_number_as_ds(float(v)) for v in values]


def slice_dataset(
    pixels: np.ndarray,
    position: np.ndarray,
    row_cosine: np.ndarray,
    col_cosine: np.ndarray,
    spacing_ij: tuple[float, float],
    *,
    series_uid: str,
    study_uid: str,
    frame_uid: str,
    instance: int,
    slope: float = 1.0,
    intercept: float = -1024.0,
    thickness: float | None = None,
) -> Dataset:
    """One CT slice; `pixels` is [row, column] int16 stored values."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.SeriesDescription = "generated"
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = ds_values(position)
    ds.ImageOrientationPatient = ds_values([*row_cosine, *col_cosine])
    ds.PixelSpacing = ds_values([spacing_ij[1], spacing_ij[0]])
    if thickness is not None:
        ds.SliceThickness = format_number_as_ds(float(thickness))
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope = format_number_as_ds(float(slope))
    ds.RescaleIntercept = format_number_as_ds(float(intercept))
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def write_series(
    folder: Path,
    stored: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    write_order: Sequence[int] | None = None,
    series_uid: str | None = None,
    intercept: float = -1024.0,
) -> list[Path]:
    """Write `stored[i, j, k]` (int16) as one file per k; slice k sits at origin + k * spacing[2] * direction[:, 2].

    The k axis may point against row x column (left-handed direction): a reader must still place voxels right.
    """
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(direction, dtype=float)
    n = stored.shape[2]
    names = names or [f"slice{k:04d}.dcm" for k in range(n)]
    series_uid, study_uid, frame_uid = series_uid or generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in write_order if write_order is not None else range(n):
        position = np.asarray(origin, dtype=float) + k * float(spacing[2]) * direction[:, 2]
        ds = slice_dataset(
            stored[:, :, k].T,
            position,
            direction[:, 0],
            direction[:, 1],
            (float(spacing[0]), float(spacing[1])),
            series_uid=series_uid,
            study_uid=study_uid,
            frame_uid=frame_uid,
            instance=k + 1,
            intercept=intercept,
        )
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
