"""Imaging I/O: the Volume type, DICOM series discovery/ordering, NIfTI."""

from medseg.io.volume import Geometry, Volume, VolumeMeta

__all__ = ["Geometry", "Volume", "VolumeMeta"]
