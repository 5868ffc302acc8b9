"""Property test: PHI planted anywhere is found by the leak check before de-identification and never after."""

from __future__ import annotations

import copy
import datetime as dt
import string
import tempfile
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medseg.deid.check import check_tree
from medseg.deid.leakcheck import Finding, Matcher, collect, normalise
from tests.deid_fixtures import run_deid

TOKEN = st.text(alphabet=string.ascii_uppercase, min_size=5, max_size=9).map(lambda s: "ZQ" + s)
DATES = st.dates(min_value=dt.date(1901, 1, 2), max_value=dt.date(2030, 12, 31))
PLACES = (
    "private", "private_un", "nested", "multivalue", "pn_components", "dates", "overlay", "file_meta",
    "institution", "nested_private", "alternative_calendar",
)  # fmt: skip


@pytest.fixture(scope="module")
def base(shared: Path) -> Dataset:
    ds = pydicom.dcmread(shared / "dicom" / "pydicom" / "CT_small.dcm")
    _base_findings(ds)
    return ds


def _nested(depth: int, inner: Dataset) -> Sequence:
    item = inner
    for _ in range(depth):
        outer = Dataset()
        outer.ReferencedSeriesSequence = Sequence([item])
        item = outer
    return item.ReferencedSeriesSequence


def plant(ds: Dataset, place: str, token: str, other: str, date: dt.date, depth: int) -> None:
    """Put identifying values somewhere in `ds`."""
    if place == "private":
        ds.private_block(0x0011, "PLANTED", create=True).add_new(0x01, "LO", token)
    elif place == "private_un":
        ds.private_block(0x0013, "PLANTED UN", create=True).add_new(0x02, "UN", token.encode() + b" ")
    elif place == "nested":
        inner = Dataset()
        inner.PatientName = f"{token}^{other}"
        inner.ImageComments = f"seen by {other} on ward"
        ds.ReferencedSeriesSequence = _nested(depth, inner)
    elif place == "nested_private":
        inner = Dataset()
        inner.private_block(0x0015, "DEEP", create=True).add_new(0x10, "LO", token)
        ds.ReferencedSeriesSequence = _nested(depth, inner)
    elif place == "multivalue":
        ds.OtherPatientIDs = ["A12345678", token, "B87654321"]
    elif place == "pn_components":
        ds.PatientName = f"{token}^{other}^^DR^"
        ds.ReferringPhysicianName = f"{other}^{token}"
    elif place == "dates":
        ds.PatientBirthDate = date.strftime("%Y%m%d")
        ds.AcquisitionDateTime = date.strftime("%Y%m%d") + "101500.123+0100"
        ds.StudyTime = "101500"
    elif place == "overlay":
        ds.add_new(0x60000010, "US", 8)
        ds.add_new(0x60000011, "US", 8)
        ds.add_new(0x60000040, "CS", "G")
        ds.add_new(0x60000050, "SS", [1, 1])
        ds.add_new(0x60000100, "US", 1)
        ds.add_new(0x60000102, "US", 0)
        ds.add_new(0x60003000, "OW", b"\xff" * 8)
        ds.add_new(0x60004000, "LT", f"patient {token}")
        ds.add_new(0x60000022, "LO", f"{other} overlay")
    elif place == "file_meta":
        ds.file_meta.SourceApplicationEntityTitle = token[:16]
        ds.file_meta.SendingApplicationEntityTitle = other[:16]
    elif place == "institution":
        ds.InstitutionName = f"{token} General Hospital"
        ds.InstitutionAddress = f"1 {other} Street"
    elif place == "alternative_calendar":
        ds.add_new(0x00100033, "LO", token)
        ds.add_new(0x00102298, "CS", other[:16])
        ds.add_new(0x00100035, "CS", other[:16])


def _planted(place: str, token: str, date: dt.date) -> str:
    """The value the leak check must collect for a place."""
    special = {"dates": date.strftime("%Y%m%d"), "file_meta": token[:16], "overlay": f"patient {token}",
               "institution": f"{token} General Hospital"}  # fmt: skip
    return special.get(place, token)


_BASE: list[int] = []


def _base_findings(base: Dataset) -> int:
    """Findings in the unplanted file checked against itself (computed once)."""
    if not _BASE:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copy.deepcopy(base).save_as(Path(tmp) / "base.dcm", enforce_file_format=True)
            _BASE.append(len(check_tree(Path(tmp), Path(tmp), ocr=False).findings))
    return _BASE[0]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    places=st.lists(st.sampled_from(PLACES), min_size=1, max_size=4, unique=True),
    token=TOKEN, other=TOKEN, date=DATES, depth=st.integers(1, 4),
)  # fmt: skip
def test_planted_phi_found_before_and_never_after(base: Dataset, places, token, other, date, depth) -> None:
    ds = copy.deepcopy(base)
    for place in places:
        plant(ds, place, token, other, date, depth)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        ds.save_as(src / "planted.dcm", enforce_file_format=True)
        matchers = collect([src / "planted.dcm"])
        known = matchers.strong.kinds | matchers.parts.kinds
        for place in places:
            assert normalise(_planted(place, token, date)) in known, place
        before = check_tree(src, src, ocr=False, matchers=matchers)
        assert len(before.findings) > _base_findings(base), "the planted values must be found in the original"
        run_deid(src, out)
        after = check_tree(src, out, ocr=False)
    assert after.files_checked == 1
    assert after.findings == [], [f.line() for f in after.findings]


def test_word_boundaries_and_normalisation() -> None:
    matcher = Matcher({normalise("Mary"): "person name part", normalise("Smith^John"): "person name"})
    assert matcher.first(normalise("PRIMARY")) is None
    assert matcher.first(normalise("mary")) == "person name part"
    assert matcher.first(normalise("Dr  SMITH john")) == "person name"
    assert matcher.first(normalise("SMITHJOHN")) is None
    assert "MARY" not in Finding("f.dcm", "(0010,0010)", "person name").line()


def test_the_name_in_one_originals_code_meaning_does_not_switch_its_search_off(base: Dataset, tmp_path: Path) -> None:
    """Values found in descriptive attributes (code meanings, body part...) are not searched, so 'LIVER' in a
    patient name does not flag every 'LIVER' of a study; the patient's whole name, identifiers and dates are always
    searched: a referring system that writes the name into a code meaning must not hide it in every file."""
    planted = copy.deepcopy(base)
    planted.PatientName, planted.PatientID = "ZZPOISON^PROBE", "987654321"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "987654321", "99LOCAL", "ZZPOISON PROBE CT ABD"
    planted.ProcedureCodeSequence = Sequence([code])
    planted.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    matchers = collect([tmp_path / "a.dcm"])
    assert matchers.strong.first(normalise("ZZPOISON^PROBE")) == "person name"
    assert matchers.strong.first(normalise("987654321")) == "identifier"
    leaked = copy.deepcopy(base)
    leaked.PatientName, leaked.PatientID = "ANONYMOUS", "X"
    leaked.ProcedureCodeSequence = Sequence([code])
    (tmp_path / "out").mkdir()
    leaked.save_as(tmp_path / "out" / "b.dcm", enforce_file_format=True)
    found = check_tree(tmp_path / "a.dcm", tmp_path / "out", ocr=False, matchers=matchers)
    assert {f.kind for f in found.findings} >= {"person name", "identifier"}, [f.line() for f in found.findings]


@pytest.mark.parametrize("name", ["ИВАНОВЗЗ^ПЕТР", "Γεωργίου^Νίκος", "山田^太郎=やまだ^たろう"])
def test_names_in_any_script_are_searched(base: Dataset, tmp_path: Path, name: str) -> None:
    """Names were normalised to A-Z and digits only, so a Cyrillic, Greek or Japanese name left nothing to search;
    each group of a multi-group name (ideographic, phonetic) is a name of its own."""
    ds = copy.deepcopy(base)
    ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", name
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    matchers = collect([tmp_path / "a.dcm"])
    for group in name.split("="):
        text = f"note: {group.replace('^', ' ')} seen"
        assert matchers.strong.first(normalise(text)) == "person name", group
    assert matchers.strong.first(normalise("CT ABDOMEN")) is None
