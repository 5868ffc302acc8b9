"""medseg.deid: PS3.15 Annex E de-identification (table as data, keyed mappings, OCR) and the leak check."""
