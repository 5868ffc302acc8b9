"""Imaging I/O: the Volume type, DICOM series discovery/ordering, NIfTI."""

from medseg.io.dicom_reader import read_dicom_series
from medseg.io.image import read_image
from medseg.io.nifti import read_nifti, write_nifti
from medseg.io.series import SeriesInfo, find_series
from medseg.io.volume import Geometry, Volume, VolumeMeta

__all__ = [
    "Geometry",
    "SeriesInfo",
    "Volume",
    "VolumeMeta",
    "find_series",
    "read_dicom_series",
    "read_image",
    "read_nifti",
    "write_nifti",
]
