"""Writers: label maps as NIfTI (via medseg.io), DICOM SEG (highdicom), summary.json and preview.png."""
