"""summary.json records the non-identifying acquisition facts that post-market monitoring compares (real headers)."""

from __future__ import annotations

import pydicom

from medseg.io import read_image
from medseg.io.summary_schema import acquisition_facts


def test_acquisition_facts_come_from_the_real_headers(shared) -> None:
    folder = shared / "ct/chaos_ct_sample/dicom"
    volume = read_image(folder)
    first = pydicom.dcmread(next(p for p in sorted(folder.iterdir()) if p.is_file()), stop_before_pixels=True)
    facts = acquisition_facts(volume.meta.extra)
    assert facts.manufacturer == (str(first.get("Manufacturer", "")).strip() or None)
    assert facts.slice_thickness_mm == (float(first.SliceThickness) if first.get("SliceThickness") else None)
    assert facts.kvp == (float(first.KVP) if first.get("KVP") else None)


def test_unparseable_numbers_are_left_out_and_decimal_commas_read() -> None:
    facts = acquisition_facts({"slice_thickness": "2,5", "kvp": "n/a", "manufacturer": " GE MEDICAL SYSTEMS "})
    assert facts.slice_thickness_mm == 2.5 and facts.kvp is None and facts.manufacturer == "GE MEDICAL SYSTEMS"
