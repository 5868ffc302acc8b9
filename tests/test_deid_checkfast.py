"""The faster leak check finds what the slower one found: the indexed word matcher equals a plain scan of every
word run, and a leak planted into the output of a run without options (where the check skips recording where
each original value was seen) is still found, nested, private and in the raw bytes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pydicom
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medseg.deid.check import check_tree
from medseg.deid.leakcheck import Matcher, normalise
from tests.deid_fixtures import refresh_digests, run_deid

WORD = st.sampled_from(["MARY", "SMITH", "JOHN", "PRIMARY", "1.2.3", "77", "DOE", "ST", "JAMES"])


def _every_run(matcher: Matcher, text: str) -> list[str]:
    """The reference: every run of whole words, at every start, up to the longest value."""
    words = text.split()
    return [
        " ".join(words[start : start + n])
        for start in range(len(words))
        for n in range(1, min(matcher.max_words, len(words) - start) + 1)
        if " ".join(words[start : start + n]) in matcher.kinds
    ]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.lists(WORD, min_size=1, max_size=4), max_size=8), text=st.lists(WORD, max_size=30))
def test_indexed_matcher_finds_exactly_the_runs_a_plain_scan_finds(values: list[list[str]], text: list[str]) -> None:
    matcher = Matcher({" ".join(v): "value" for v in values})
    assert list(matcher.found(" ".join(text))) == _every_run(matcher, " ".join(text))


def test_leak_planted_in_the_output_of_a_run_without_options_is_found(shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    original = shared / "dicom" / "pydicom" / "CT_small.dcm"
    (src / "ct.dcm").write_bytes(original.read_bytes())
    record = run_deid(src, tmp_path / "out").records[0]
    manifest = json.loads((tmp_path / "out" / "deid-manifest.json").read_text())
    assert record.status == "written" and manifest["options"] == []
    refresh_digests(tmp_path / "out")
    assert check_tree(src, tmp_path / "out", ocr=False).findings == []
    name = str(pydicom.dcmread(original).PatientName)
    assert normalise(name)
    written = tmp_path / "out" / record.output
    ds = pydicom.dcmread(written)
    item = Dataset()
    item.PatientID = "X"
    item.ImageComments = f"seen by {name.split('^')[0].lower()} today"  # a name part, nested, other case
    ds.ReferencedImageSequence = Sequence([item])
    ds.add_new(0x00091010, "LO", "PRIVATE")
    ds.add_new(0x00091011, "LO", name)  # the whole name in a private tag
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(written)
    refresh_digests(tmp_path / "out")
    findings = check_tree(src, tmp_path / "out", ocr=False).findings
    places = {f.location for f in findings}
    assert "(0008,1140)[0](0020,4000)" in places, places
    assert "(0009,1011)" in places and "raw bytes" in places, places
    assert all(normalise(name) not in f.line().upper() for f in findings)
