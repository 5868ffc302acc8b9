"""What kind of DICOM object a file is: an image of a volume modality, or a non-image object (SEG, RTSTRUCT, SR,
DICOMDIR...) that medseg lists but never reads as a volume. SOP class UIDs come from `pydicom.uid`."""

from __future__ import annotations

from typing import Any

from pydicom import uid as _uid

from medseg.io.dicom_headers import DICOMDIR_CLASS, LABEL_MAP_SEG_CLASS, sop_class, text

__all__ = ["CLASS_PREFIXES", "NON_IMAGE_CLASSES", "NON_IMAGE_MODALITIES", "VOLUME_MODALITIES",
           "non_image_kind"]  # fmt: skip

VOLUME_MODALITIES = frozenset({"CT", "MR", "PT"})
NON_IMAGE_CLASSES = {  # SOP classes from pydicom.uid; the values are medseg's short user-facing names
    str(_uid.SegmentationStorage): "DICOM SEG (segmentation)",
    LABEL_MAP_SEG_CLASS: "DICOM label-map SEG",
    str(_uid.RTStructureSetStorage): "RTSTRUCT (contours)",
    str(_uid.RTPlanStorage): "RT Plan",
    str(_uid.RTIonPlanStorage): "RT Ion Plan",
    str(_uid.RTDoseStorage): "RT Dose",
    str(_uid.KeyObjectSelectionDocumentStorage): "Key Object Selection",
    str(_uid.RawDataStorage): "Raw Data",
    str(_uid.SpatialRegistrationStorage): "Spatial Registration",
    str(_uid.DeformableSpatialRegistrationStorage): "Deformable Registration",
    str(_uid.RealWorldValueMappingStorage): "Real World Value Mapping",
    str(_uid.EncapsulatedPDFStorage): "Encapsulated PDF",
    str(_uid.MicroscopyBulkSimpleAnnotationsStorage): "Microscopy Bulk Annotations",
    str(_uid.SecondaryCaptureImageStorage): "Secondary Capture",
    DICOMDIR_CLASS: "DICOMDIR (file-set index)",
}
CLASS_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "Structured Report (SR)",
    "1.2.840.10008.5.1.4.1.1.11.": "Presentation State",
    "1.2.840.10008.5.1.4.1.1.9.": "Waveform",
    "1.2.840.10008.5.1.4.1.1.7.": "Secondary Capture",
}
NON_IMAGE_MODALITIES = {
    "SEG": "DICOM SEG",
    "RTSTRUCT": "RTSTRUCT",
    "RTPLAN": "RT Plan",
    "RTDOSE": "RT Dose",
    "SR": "Structured Report (SR)",
    "KO": "Key Object Selection",
    "PR": "Presentation State",
    "REG": "Registration",
    "DOC": "document",
}
def non_image_kind(ds: Any) -> str | None:
    """Name of the non-image object type (SEG, RTSTRUCT, SR, DICOMDIR...), or None for images."""
    uid = sop_class(ds)
    if uid in NON_IMAGE_CLASSES:
        return NON_IMAGE_CLASSES[uid]
    for prefix, name in CLASS_PREFIXES.items():
        if uid.startswith(prefix):
            return name
    if "DirectoryRecordSequence" in ds:
        return NON_IMAGE_CLASSES[DICOMDIR_CLASS]
    return NON_IMAGE_MODALITIES.get(text(ds, "Modality").upper())
