"""The leak check under retain/clean options: an attribute's own value kept by an option is reported as kept by
that option (not a failure); the same value anywhere else, or another value there, is still a real leak."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from cli_run import run_cli

from medseg.deid.check import check_tree
from medseg.deid.retained import option_keeping, options_in
from medseg.deid.table import OPTIONS
from tests.deid_fixtures import SECRET, refresh_digests, run_deid

RETAINING = ("retain-dates-shifted", "retain-device-identity", "retain-patient-characteristics",
             "retain-institution-identity", "retain-safe-private", "clean-descriptors", "clean-structured-content",
             "clean-graphics")  # fmt: skip


def _check(src: Path, out: Path):
    refresh_digests(out)  # the tests plant values in released files: as if the run had written them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return check_tree(src, out, ocr=False, secret=SECRET)  # outputs paired with originals by keyed digests


def _one_ct(shared: Path, tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    first = sorted((shared / "dicom" / "ct_series_totalsegmentator").iterdir())[0]
    shutil.copy(first, src / "ct.dcm")
    return src


def test_options_are_read_from_the_output_codes_within_the_manifest(shared: Path, tmp_path: Path) -> None:
    src = _one_ct(shared, tmp_path)
    out = tmp_path / "out"
    result = run_deid(src, out, options=frozenset({"retain-device-identity", "clean-descriptors"}))
    ds = pydicom.dcmread(out / result.records[0].output)
    assert options_in(ds) == {"retain-device-identity", "clean-descriptors"}
    assert options_in(ds, ["clean-descriptors"]) == {"clean-descriptors"}
    assert option_keeping(0x00181000, frozenset({"retain-device-identity"})) == "retain-device-identity"
    assert option_keeping(0x00181000, frozenset({"retain-uids"})) is None
    assert option_keeping(0x00100010, frozenset(OPTIONS)) is None  # PatientName: no option keeps it


def test_kept_value_is_kept_by_option_and_planted_copies_are_real_leaks(shared: Path, tmp_path: Path) -> None:
    src = _one_ct(shared, tmp_path)
    out = tmp_path / "out"
    result = run_deid(src, out, options=frozenset({"retain-device-identity"}))
    target = out / result.records[0].output
    clean = _check(src, out)
    assert clean.findings == []
    kept = {f.location: f.kept_by for f in clean.kept}
    assert kept.get("(0018,1000)") == "retain-device-identity", kept  # DeviceSerialNumber, kept on purpose
    assert kept.get("(0008,1010)") == "retain-device-identity", kept  # StationName

    original = pydicom.dcmread(src / "ct.dcm")
    ds = pydicom.dcmread(target)
    ds.ImageComments = f"scanner {original.DeviceSerialNumber} room 4"  # a kept value where no option keeps it
    ds.save_as(target)
    planted = _check(src, out)
    assert [f.location for f in planted.findings] == ["(0020,4000)"], [f.line() for f in planted.findings]
    assert "kept by" not in planted.findings[0].line()

    ds = pydicom.dcmread(target)
    del ds.ImageComments
    ds.DeviceSerialNumber = str(original.StationName)  # a retained attribute holding another attribute's value
    ds.save_as(target)
    swapped = _check(src, out)
    assert "(0018,1000)" in [f.location for f in swapped.findings], [f.line() for f in swapped.findings]


def test_a_shifted_date_equal_to_another_real_date_is_kept_and_an_unshifted_one_is_a_leak(
    shared: Path, tmp_path: Path
) -> None:
    """Retain Modified Dates: a file's own dates moved back by its shift are kept by the option even where the
    shifted value happens to be another real date of the corpus; an unmoved or copied date is a real leak."""
    src = _one_ct(shared, tmp_path)
    out = tmp_path / "out"
    result = run_deid(src, out, options=frozenset({"retain-dates-shifted"}))
    target = out / result.records[0].output
    original, ds = pydicom.dcmread(src / "ct.dcm"), pydicom.dcmread(target)
    assert ds.StudyDate != original.StudyDate
    other = pydicom.dcmread(src / "ct.dcm")
    other.StudyDate = other.SeriesDate = other.AcquisitionDate = other.ContentDate = ds.StudyDate
    other.save_as(tmp_path / "in" / "other.dcm")  # another original whose real dates equal the shifted one
    coincidence = _check(src, out)
    assert coincidence.findings == [], [f.line() for f in coincidence.findings]
    assert {f.kept_by for f in coincidence.kept} == {"retain-dates-shifted"}
    assert "(0008,0020)" in {f.location for f in coincidence.kept}

    ds.AcquisitionDate = original.AcquisitionDate  # left unshifted
    ds.save_as(target)
    unshifted = _check(src, out)
    assert "(0008,0022)" in [f.location for f in unshifted.findings], [f.line() for f in unshifted.findings]

    ds = pydicom.dcmread(target)
    ds.AcquisitionDate = ds.StudyDate
    ds.ContentDate = "19700101"
    other.ContentDate = "19700101"
    other.save_as(tmp_path / "in" / "other.dcm")  # a real date of the corpus written where a shifted one belongs
    ds.save_as(target)
    copied = _check(src, out)
    assert [f.location for f in copied.findings if f.location != "raw bytes"] == ["(0008,0023)"], [
        f.line() for f in copied.findings
    ]


def test_claimed_option_outside_the_manifest_is_not_honoured(shared: Path, tmp_path: Path) -> None:
    src = _one_ct(shared, tmp_path)
    out = tmp_path / "out"
    result = run_deid(src, out)
    target = out / result.records[0].output
    ds = pydicom.dcmread(target)
    original = pydicom.dcmread(src / "ct.dcm")
    ds.DeviceSerialNumber = original.DeviceSerialNumber
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113109", "DCM", "Retain Device Identity Option"
    ds.DeidentificationMethodCodeSequence.append(item)  # the file claims an option the run did not use
    ds.save_as(target)
    found = _check(src, out)
    assert "(0018,1000)" in [f.location for f in found.findings]


@pytest.mark.slow
@pytest.mark.parametrize("option", RETAINING)
def test_no_real_leak_under_each_option_on_the_corpus(shared: Path, tmp_path: Path, option: str) -> None:
    real, kept = [], 0
    for name in ("deid", "dicom"):
        out = tmp_path / name
        run_deid(shared / name, out, options=frozenset({option}))
        result = _check(shared / name, out)
        real += [f.line() for f in result.findings]
        kept += len(result.kept)
        assert all(f.kept_by == option for f in result.kept)
    assert real == [], real[:5]


def test_cli_check_passes_and_names_what_an_option_kept(shared: Path, tmp_path: Path, capsys) -> None:
    src = _one_ct(shared, tmp_path)
    key = tmp_path / "key"
    key.write_text("ab" * 32)
    key.chmod(0o600)
    out = tmp_path / "out"
    code, text = run_cli(["deid", str(src), str(out), "--key-file", str(key), "--pixels", "off",
                          "--option", "retain-device-identity", "--workers", "1"], capsys)  # fmt: skip
    assert code == 0, text
    code, text = run_cli(["deid", "check", str(src), str(out), "--no-ocr"], capsys)
    assert code == 6 and "pixels NOT checked in 1" in text, text  # header clean; pixels not OCRed: not certified
    assert "kept on purpose by option retain-device-identity" in text and "60064" not in text


def test_a_kept_attribute_holding_the_patients_name_is_a_real_leak(shared: Path, tmp_path: Path) -> None:
    """Retain Device Identity keeps StationName; a station name that is the patient's name is not device identity."""
    src = _one_ct(shared, tmp_path)
    ds = pydicom.dcmread(src / "ct.dcm")
    ds.PatientName, ds.StationName = "ZZSTATION^PROBE", "ZZSTATION^PROBE"
    ds.save_as(src / "ct.dcm")
    out = tmp_path / "out"
    run_deid(src, out, options=frozenset({"retain-device-identity"}))
    result = _check(src, out)
    assert any(f.location == "(0008,1010)" for f in result.findings), ([f.line() for f in result.findings],
                                                                       [f.line() for f in result.kept])  # fmt: skip
    assert not any(f.location == "(0008,1010)" for f in result.kept)
