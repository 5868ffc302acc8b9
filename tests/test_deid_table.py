"""Table E.1-1, CID 7050 and the safe lists inside the package match their sources and each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.sr.codedict import codes

from medseg.deid.table import COMBINED, OPTIONS, check_options, load_cid7050, load_safe_attributes, load_table, tag_key
from medseg.errors import UsageError

PACKAGE_TABLE = Path(__file__).resolve().parents[1] / "medseg" / "deid" / "data" / "table_e1_1.json"
COLUMNS = {
    "rtnSafePrivOpt": "retain-safe-private", "rtnUIDsOpt": "retain-uids", "rtnDevIdOpt": "retain-device-identity",
    "rtnInstIdOpt": "retain-institution-identity", "rtnPatCharsOpt": "retain-patient-characteristics",
    "rtnLongFullDatesOpt": "retain-dates-full", "rtnLongModifDatesOpt": "retain-dates-shifted",
    "cleanDescOpt": "clean-descriptors", "cleanStructContOpt": "clean-structured-content",
    "cleanGraphOpt": "clean-graphics",
}  # fmt: skip


@pytest.fixture(scope="module")
def source(shared: Path) -> list[dict[str, str]]:
    return json.loads((shared / "standard" / "confidentiality_profile_attributes.json").read_text())


def test_package_table_matches_the_standard_row_by_row(source: list[dict[str, str]]) -> None:
    package = json.loads(PACKAGE_TABLE.read_text())
    assert package["edition"] == "2024b"
    assert len(source) == len(package["rows"]) == 621
    for src, row in zip(source, package["rows"], strict=True):
        assert row["tag"] == src["tag"]
        assert row["name"] == " ".join(src["name"].split())
        assert row["basic"] == src["basicProfile"]
        assert row["options"] == {COLUMNS[k]: v for k, v in src.items() if k in COLUMNS and v}


def test_every_code_is_a_known_action(source: list[dict[str, str]]) -> None:
    codes_seen = {r["basicProfile"] for r in source}
    assert codes_seen <= set("DZXKCU") | set(COMBINED)
    table = load_table()
    for row in table.rows.values():
        for options in [frozenset(), *(frozenset([o]) for o in OPTIONS)]:
            assert row.action(options) in "DZXKCU"


def test_options_override_basic_and_retaining_wins() -> None:
    table = load_table()
    calibration = table.rows[tag_key("(0018,1203)")]  # Calibration DateTime: Z; device K; modified dates C
    assert calibration.action(frozenset()) == "Z"
    assert calibration.action(frozenset({"retain-dates-shifted"})) == "C"
    assert calibration.action(frozenset({"retain-dates-shifted", "retain-device-identity"})) == "K"
    assert table.lookup(0x60024000).name == "Overlay Comments"
    assert table.lookup(0x50101234).name == "Curve Data"


def test_cid7050_matches_pydicom() -> None:
    from pydicom.sr._cid_dict import cid_concepts

    by_value = {}
    for keyword in cid_concepts[7050]["DCM"]:
        code = getattr(codes.cid7050, keyword)
        by_value[code.value] = code.meaning
    ours = load_cid7050()
    assert set(ours) == {"basic", *OPTIONS}
    for value, meaning in ours.values():
        assert by_value[value] == meaning


def test_safe_list_never_overlaps_the_table_and_text_entries_are_reviewed() -> None:
    table_keys = set(load_table().rows)
    data = json.loads((PACKAGE_TABLE.parent / "safe_attributes.json").read_text())
    text_vrs = set(data["text_vrs"])
    for keyword in load_safe_attributes():
        tag = keyword_dict.get(keyword)
        if tag is None:
            continue  # repeating-group keyword (overlays): checked by the engine's table lookup first
        assert f"{tag:08X}" not in table_keys, keyword
        vrs = set(dictionary_VR(tag).replace(" or ", " ").split())
        assert not (vrs & text_vrs) or keyword in data["text"], keyword
    for needed in ("PixelSpacing", "ImageOrientationPatient", "SliceThickness", "KVP", "SOPClassUID", "Modality",
                   "RescaleSlope", "ReferencedSeriesSequence", "SeriesNumber", "ConvolutionKernel"):  # fmt: skip
        assert needed in load_safe_attributes()


def test_conflicting_or_unknown_options_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        check_options(["retain-dates-full", "retain-dates-shifted"])
    with pytest.raises(UsageError):
        check_options(["retain-everything"])
