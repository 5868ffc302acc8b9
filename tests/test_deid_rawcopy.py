"""The raw copier (medseg.deid.rawcopy, rawvalues) against the full pydicom path it replaces: same output bytes
and the same manifest records on every corpus file and on generated data sets; the cases it leaves to pydicom."""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from medseg.deid import rawcopy
from medseg.deid.runner import DeidSettings, RunResult, deidentify_tree, discover
from tests.deid_fixtures import SECRET, corpus_runs


@pytest.fixture(scope="session")
def corpus_run(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return corpus_runs(shared, tmp_path_factory)


def _run(src: Path, out: Path, copy_raw: bool, options: frozenset[str] = frozenset()) -> RunResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return deidentify_tree(src, out, SECRET, DeidSettings(options, scan_pixels=False, copy_raw=copy_raw))


def _assert_same(fast: RunResult, fast_out: Path, full: RunResult, full_out: Path) -> int:
    """Records equal field by field and every output byte-identical; returns the number of outputs compared."""
    assert [vars(r) for r in fast.records] == [vars(r) for r in full.records]
    compared = 0
    for rec in fast.records:
        if rec.output is not None:
            assert (fast_out / rec.output).read_bytes() == (full_out / rec.output).read_bytes(), rec.output
            compared += 1
    return compared


@pytest.mark.parametrize("name", ["deid", "dicom"])
def test_every_corpus_output_is_byte_identical_to_the_full_path(corpus_run, name: str, tmp_path: Path) -> None:
    """The acceptance test: for every file of deid/ and dicom/, the raw copier (the default) writes exactly the
    bytes, records exactly the actions and names the full pydicom path does."""
    src, fast_out, fast = corpus_run[name]
    files = list(discover(src).files)
    assert len(files) >= 40, f"{src} holds {len(files)} files: the shared corpus is incomplete"
    copied = sum(rawcopy.parse(p, p.read_bytes()) is not None for p in files)
    assert copied >= 0.8 * len(files) - 50, f"the raw copier took only {copied} of {len(files)} files"
    full = _run(src, tmp_path / "full", copy_raw=False)
    compared = _assert_same(fast, fast_out, full, tmp_path / "full")
    assert compared >= 45


@pytest.mark.parametrize(
    "options",
    [{"retain-uids"}, {"retain-dates-shifted"}, {"retain-safe-private"}, {"clean-descriptors"},
     {"retain-device-identity", "retain-patient-characteristics"}],
    ids=lambda o: "+".join(sorted(o)),
)  # fmt: skip
def test_options_give_the_same_bytes_on_both_paths(shared: Path, tmp_path: Path, options: set[str]) -> None:
    src = shared / "deid" / "tcia_pseudo_phi_mr"
    chosen = frozenset(options)
    fast = _run(src, tmp_path / "fast", copy_raw=True, options=chosen)
    full = _run(src, tmp_path / "full", copy_raw=False, options=chosen)
    assert _assert_same(fast, tmp_path / "fast", full, tmp_path / "full") >= 10


@pytest.mark.parametrize(
    ("relative", "why"),
    [
        ("pydicom/ExplVR_BigEnd.dcm", "big endian"),
        ("pydicom/image_dfl.dcm", "deflated"),
        ("pydicom/no_meta.dcm", "no file meta"),
        ("pydicom/rtplan_truncated.dcm", "cut inside an element"),
        ("pydicom/UN_sequence.dcm", "undefined-length UN"),
        ("pydicom/dicomdirtests/DICOMDIR", "DICOMDIR"),
    ],
)
def test_unusual_files_are_left_to_the_full_path(shared: Path, relative: str, why: str) -> None:
    path = shared / "dicom" / relative
    assert rawcopy.parse(path, path.read_bytes()) is None, why


def test_sequences_stay_bytes_unless_something_in_them_changes(shared: Path) -> None:
    """A safe code sequence comes back as the very same raw element (its input bytes are copied); a sequence of
    references comes back as new bytes with every referenced UID mapped."""
    from medseg.deid.engine import FileContext
    from medseg.deid.keyed import KeyedMapper

    files = list(discover(shared / "dicom" / "ct_series_totalsegmentator").files)
    assert len(files) >= 10
    for path in files:
        raw = rawcopy.parse(path, path.read_bytes())
        assert raw is not None, path
        ctx = FileContext(KeyedMapper(SECRET), frozenset(), "none")
        codes = raw.spans[BaseTag(0x00081032)][0]  # Procedure Code Sequence: codes only
        assert rawcopy.sequence(codes, "iso8859", ctx) is codes
        refs = raw.spans[BaseTag(0x00081140)][0]  # Referenced Image Sequence: SOP Instance UIDs
        new = rawcopy.sequence(refs, "iso8859", ctx)
        assert new is not None and new is not refs
        originals = [e.value for item in raw.dataset.ReferencedImageSequence for e in item if e.VR == "UI"]
        assert originals and not any(str(uid).encode() in new.value for uid in originals if "10008" not in uid)


_TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ^", min_size=0, max_size=12).map(str.strip)
_LEAF = st.sampled_from(
    [
        ("StudyDate", "20240131"), ("ContentTime", "101010.5"), ("AcquisitionDateTime", "20240131101010"),
        ("InstitutionName", None), ("ReferringPhysicianName", None), ("SliceThickness", "1.25"),
        ("ImageType", ["ORIGINAL", "PRIMARY", "AXIAL"]), ("SeriesDescription", None), ("DeviceSerialNumber", None),
        ("FrameOfReferenceUID", "uid"), ("ImageComments", None), ("StudyID", None), ("AccessionNumber", None),
        ("PixelSpacing", ["0.5", "0.5"]), ("ContrastBolusAgent", None), ("ReferencedSOPInstanceUID", "uid"),
        ("ReferencedSOPClassUID", "1.2.840.10008.5.1.4.1.1.2"), ("CodeValue", "T-D0050"), ("CodeMeaning", None),
        ("CodingSchemeDesignator", "SRT"), ("OperatorsName", None), ("StationName", None), ("PatientAge", "042Y"),
        ("RescaleSlope", "1"), ("WindowCenter", ["40", "400"]), ("InstanceNumber", "7"), ("Laterality", "R"),
    ]
)  # fmt: skip
_SEQUENCES = ["ReferencedImageSequence", "ProcedureCodeSequence", "ReferencedSeriesSequence", "ContentSequence",
              "AnatomicRegionSequence", "RequestAttributesSequence", "SourceImageSequence"]  # fmt: skip


def _level(draw, depth: int) -> Dataset:
    ds = Dataset()
    for keyword, value in draw(st.lists(_LEAF, max_size=8)):
        setattr(ds, keyword, generate_uid() if value == "uid" else draw(_TEXT) if value is None else value)
    if draw(st.booleans()):
        block = ds.private_block(0x0009, "ACME 1.0", create=True)
        block.add_new(0x01, "LO", draw(_TEXT))
    if depth < 3:
        for keyword in draw(st.lists(st.sampled_from(_SEQUENCES), max_size=2, unique=True)):
            items = [_level(draw, depth + 1) for _ in range(draw(st.integers(0, 2)))]
            for item in items:
                item.is_undefined_length_sequence_item = draw(st.booleans())
            setattr(ds, keyword, Sequence(items))
            ds[keyword].is_undefined_length = draw(st.booleans())
    return ds


@st.composite
def _datasets(draw) -> tuple[bytes, bool]:
    ds = _level(draw, 0)
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "CT"
    ds.PatientName, ds.PatientID = draw(_TEXT) or "DOE^JANE", draw(_TEXT) or "ID42"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 12, 11, 0, 1
    ds.PhotometricInterpretation, ds.PixelData = "MONOCHROME2", bytes(range(8))
    implicit = draw(st.booleans())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue(), implicit


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(generated=_datasets(), options=st.sampled_from([frozenset(), frozenset({"retain-uids"}),
                                                       frozenset({"clean-descriptors"})]))  # fmt: skip
def test_generated_data_sets_give_the_same_bytes_on_both_paths(generated: tuple[bytes, bool], options) -> None:
    """Random kept, removed, private and nested elements (sequences of defined and undefined length, 3 deep,
    implicit and explicit VR): the raw copier takes the file and writes what the full path writes."""
    data, _ = generated
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in" / "file.dcm"
        src.parent.mkdir()
        src.write_bytes(data)
        assert rawcopy.parse(src, data) is not None
        fast = _run(src, Path(tmp) / "fast", copy_raw=True, options=options)
        full = _run(src, Path(tmp) / "full", copy_raw=False, options=options)
        assert _assert_same(fast, Path(tmp) / "fast", full, Path(tmp) / "full") == 1


def test_overlapping_unchecked_blocks_leave_pydicom_checking_values() -> None:
    """Two de-identifying threads (the PACS service's workers) whose blocks overlap, the first ending first: pydicom's
    process-wide mode is the caller's again after both, not left at IGNORE by the second block's stale save."""
    import threading

    from pydicom import config

    from medseg.deid.rawcopy import unchecked_reads

    before = config.settings.reading_validation_mode
    assert before != config.IGNORE
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with unchecked_reads():
            a_in.set()
            assert b_in.wait(10)
        a_out.set()

    def second() -> None:
        assert a_in.wait(10)
        with unchecked_reads():
            b_in.set()
            assert a_out.wait(10)
            assert config.settings.reading_validation_mode == config.IGNORE  # still inside a block

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert config.settings.reading_validation_mode == before
