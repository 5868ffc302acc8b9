"""Standard tables come from (or are checked against) the standard's libraries: pydicom.uid, pydicom.sr.codedict."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom.uid as uid
from pydicom.sr.codedict import codes

from medseg.io.dicom_classify import NON_IMAGE_CLASSES
from medseg.io.dicom_headers import ENHANCED_IMAGE_CLASSES
from medseg.io.summary_schema import summary_json_schema
from medseg.writers.seg import segment_codes

REPO = Path(__file__).resolve().parents[1]
NOT_IN_PYDICOM_SCT = {"9846003", "18639004"}  # right/left kidney: valid SNOMED CT, not in pydicom's SCT dictionary


def _sct_by_value() -> dict[str, set[str]]:
    """Every meaning pydicom gives a SNOMED CT value (e.g. 64033007: Kidney, Kidney structure, Endo-renal)."""
    table: dict[str, set[str]] = {}
    for name in dir(codes.SCT):
        code = getattr(codes.SCT, name, None)
        if hasattr(code, "value") and hasattr(code, "meaning"):
            table.setdefault(code.value, set()).add(code.meaning.lower())
    return table


def test_segment_codes_match_pydicom_snomed_dictionary():
    sct = _sct_by_value()
    table = segment_codes()
    assert table["category"]["value"] == codes.cid7150.AnatomicalStructure.value
    assert table["category"]["meaning"] == codes.cid7150.AnatomicalStructure.meaning
    checked = 0
    for name, entry in table["structures"].items():
        assert entry["scheme"] == "SCT", name
        if entry["value"] in NOT_IN_PYDICOM_SCT:
            continue
        assert entry["meaning"].lower() in sct.get(entry["value"], set()), (name, entry)
        checked += 1
    assert checked >= 6 and codes.SCT.Liver.value == table["structures"]["liver"]["value"]
    assert (table["structures"]["kidney"]["value"], table["structures"]["heart"]["value"]) == (
        codes.SCT.Kidney.value,
        codes.SCT.Heart.value,
    )


def test_uid_tables_are_pydicom_storage_classes():
    storage = {str(getattr(uid, n)): n for n in dir(uid) if n.endswith("Storage")}
    assert all(u in storage and "Enhanced" in storage[u] for u in ENHANCED_IMAGE_CLASSES)
    unknown = sorted(u for u in NON_IMAGE_CLASSES if u not in storage)
    assert unknown == ["1.2.840.10008.5.1.4.1.1.66.7"]  # Label Map Segmentation: newer than this pydicom


def test_published_summary_schema_is_current():
    published = json.loads((REPO / "docs/summary.schema.json").read_text())
    assert published == summary_json_schema()
    assert set(published["$defs"]["CaseStatus"]["enum"]) == {"ok", "flagged", "qc_rejected", "failed"}
