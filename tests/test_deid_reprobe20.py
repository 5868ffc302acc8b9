"""Defects a re-probe of the review-20 `medseg deid` fixes found (re-probe 20): each test failed on the code before its
fix. Real data from the shared corpus (read, never copied into the repository), edited with pydicom in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from medseg.deid.check import check_tree
from medseg.deid.engine import embeds_identity
from medseg.deid.leakcheck import Matchers, collect, embedded_hits, normalise
from medseg.errors import InvalidInputError, UsageError
from tests.deid_fixtures import SECRET, refresh_digests, run_deid

RT = Path("dicom") / "rtstruct" / "rt-utils" / "mock_data"
CODES = ("ContourGeometricType", "ROIGenerationAlgorithm", "BodyPartExamined")


def _released(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.dcm") if ".deid-state" not in p.parts and "quarantine" not in p.parts)


def _rt_series(shared: Path, folder: Path, patient: str, physician: str = "SMITH^PAUL") -> Path:
    """The rt-utils CT slices and their RT Structure Set with the given patient and referring physician, the CT
    slices of the pelvis."""
    folder.mkdir(parents=True)
    for name in ("ct_1.dcm", "ct_2.dcm", "rt.dcm"):
        ds = pydicom.dcmread(shared / RT / name)
        ds.PatientName, ds.ReferringPhysicianName = patient, physician
        if ds.Modality == "CT":
            ds.BodyPartExamined = "PELVIS"
        ds.save_as(folder / name)
    return folder


def _codes(out: Path) -> set[str]:
    return {f"{e.keyword}={e.value}" for p in _released(out) for e in pydicom.dcmread(p).iterall()
            if e.keyword in CODES}  # fmt: skip


# --- 1: common first names inside ordinary codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patient", "physician"),
    [("PRESLEY^ELVIS", "SMITH^PAUL"), ("KANE^LANA", "SMITH^PAUL"), ("GINOBILI^MANU", "SMITH^PAUL"),
     ("DOE^JOHN", "PRESLEY^ELVIS^LANA MANU")],
)  # fmt: skip
def test_codes_holding_a_first_name_are_kept_and_pass_the_check(
    shared: Path, tmp_path: Path, patient: str, physician: str
) -> None:
    """PELVIS (patient ELVIS) was released as REMOVED; CLOSED_PLANAR (LANA) and MANUAL (MANU) failed the check, also
    when only the referring physician had those names."""
    src = _rt_series(shared, tmp_path / "in", patient, physician)
    run_deid(src, tmp_path / "out")
    assert _codes(tmp_path / "out") == {
        "BodyPartExamined=PELVIS", "ContourGeometricType=CLOSED_PLANAR", "ROIGenerationAlgorithm=MANUAL"
    }  # fmt: skip
    result = check_tree(src, tmp_path / "out", ocr=False)
    assert [f.line() for f in result.findings if not f.kept_by] == []


@pytest.mark.parametrize(("name", "code"), [("NORMA", "NORMAL"), ("RENA", "RENAL"), ("LINE", "LINEAR"),
                                            ("PINE", "SPINE"), ("ELVIS", "PELVIS"), ("LANA", "CLOSED_PLANAR")])
def test_standard_words_are_no_glued_name(name: str, code: str) -> None:
    """The run's affix rule: a word of the standard holding the name is a code, the name glued to a code is not."""
    assert not embeds_identity(code, {name})
    assert embeds_identity(f"{name}B", {name})


def _matchers(shared: Path, tmp_path: Path, patient: str, patient_id: str = "PID-77") -> Matchers:
    src = _rt_series(shared, tmp_path / "m", patient, "SMITH^PAUL")
    for path in src.iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientID = patient_id
        ds.save_as(path)
    return collect(sorted(src.iterdir()))


def test_the_check_still_finds_names_and_ids_glued_to_codes(shared: Path, tmp_path: Path) -> None:
    """The reviewer's cases stay caught: MRN9894340694, 9894340694CT, MILLERB; NORMAL for NORMA is not."""
    matchers = _matchers(shared, tmp_path, "MILLER^NORMA", "9894340694")
    for code in ("MRN9894340694", "9894340694CT", "MILLERB"):
        assert embedded_hits(normalise(code), matchers), code
    for code in ("NORMAL", "PELVIS", "PRIMARY"):
        assert not embedded_hits(normalise(code), matchers), code


# --- 2: the CS rule inside sequences of an implicit VR file ----------------------------------------------------------


@pytest.mark.parametrize("explicit", [False, True])
def test_nested_codes_holding_the_name_are_replaced_in_implicit_vr_files(
    shared: Path, tmp_path: Path, explicit: bool
) -> None:
    """The rt-utils RT Structure Set is Implicit VR: a nested ContourGeometricType 'QUIXOTE' and ROIGeneration
    Algorithm 'QUIXOTEB' of patient QUIXOTE^ZEBULON were released (the raw copier passed no VR to the CS rule)."""
    ds = pydicom.dcmread(shared / RT / "rt.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    ds.PatientName = "QUIXOTE^ZEBULON"
    ds.ROIContourSequence[0].ContourSequence[0].ContourGeometricType = "QUIXOTE"
    ds.StructureSetROISequence[0].ROIGenerationAlgorithm = "QUIXOTEB"
    (tmp_path / "in").mkdir()
    if explicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(tmp_path / "in" / "rt.dcm", enforce_file_format=explicit)
    run_deid(tmp_path / "in", tmp_path / "out")
    out = pydicom.dcmread(_released(tmp_path / "out")[0])
    assert out.ROIContourSequence[0].ContourSequence[0].ContourGeometricType == "REMOVED"
    assert out.StructureSetROISequence[0].ROIGenerationAlgorithm == "REMOVED"


# --- 3: a patient ID that is a word of the standard's UIDs -----------------------------------------------------------


def test_a_patient_id_inside_class_uids_is_no_leak(shared: Path, tmp_path: Path) -> None:
    """Patient ID 10008 failed every released file: it is a dot-separated word of 1.2.840.10008... (SOP class,
    transfer syntax), which no de-identification changes."""
    (tmp_path / "in").mkdir()
    for name, pid, uid in (("A^ANNA", "10008", "1.2.3.4.1"), ("B^BERT", "PIDB88456", "1.2.3.4.2")):
        ds = pydicom.dcmread(shared / RT / "ct_1.dcm")
        ds.PatientName, ds.PatientID = name, pid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, f"{uid}.1", f"{uid}.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(tmp_path / "in" / f"{name[0]}.dcm")
    run_deid(tmp_path / "in", tmp_path / "out")
    result = check_tree(tmp_path / "in", tmp_path / "out", ocr=False)
    assert [f.line() for f in result.findings if not f.kept_by] == []


# --- 4: a digit-only name part in ImageType --------------------------------------------------------------------------


def test_the_corpus_us_file_passes_the_default_check_beside_pancreas_0001(shared: Path, tmp_path: Path) -> None:
    """Default options (pixel scan, OCR check) on (2 frames of) the corpus' US multi-frame (ImageType
    DERIVED\\PRIMARY\\EPICARDIAL\\0001) beside the file of patient PANCREAS_0001: the check split '0001' out of the
    name and failed the US file."""
    src = tmp_path / "in"
    src.mkdir()
    us = pydicom.dcmread(shared / "dicom" / "pydicom" / "examples_ybr_color.dcm")
    frames = list(generate_frames(us.PixelData, number_of_frames=us.NumberOfFrames))
    us.PixelData, us.NumberOfFrames = encapsulate(frames[:2]), 2  # 2 of its 30 JPEG frames: OCR takes seconds
    us.save_as(src / "us.dcm")
    (src / "pancreas.dcm").write_bytes((shared / "dicom" / "pydicom_data" / "explicit_VR-UN.dcm").read_bytes())
    assert "0001" in pydicom.dcmread(src / "us.dcm").ImageType
    assert "PANCREAS_0001" in str(pydicom.dcmread(src / "pancreas.dcm").PatientName)
    run_deid(src, tmp_path / "out", scan_pixels=True)
    result = check_tree(src, tmp_path / "out")
    assert [f.line() for f in result.findings if not f.kept_by] == []
    assert result.files_checked == 2 and not result.unchecked and not result.pixels_unchecked


# --- 5: a patient ID that is a word of SpecificCharacterSet ----------------------------------------------------------


@pytest.mark.parametrize(("patient_id", "charset"), [("100", "ISO_IR 100"), ("192", "ISO_IR 192")])
def test_the_character_set_survives_a_patient_id_that_is_its_number(
    shared: Path, tmp_path: Path, patient_id: str, charset: str
) -> None:
    """PatientID '100' turned SpecificCharacterSet 'ISO_IR 100' into 'REMOVED', and the release's text was decoded
    wrongly; a Modality holding the patient's name is still no term and is replaced."""
    ds = pydicom.dcmread(shared / RT / "ct_1.dcm")
    ds.SpecificCharacterSet, ds.PatientID, ds.PatientName = charset, patient_id, "QUIXOTE^ZEBULON"
    ds.Manufacturer = "Müller Medizintechnik"
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "a.dcm")
    other = pydicom.dcmread(shared / RT / "ct_2.dcm")
    other.PatientName, other.PatientID, other.Modality = "QUIXOTE^ZEBULON", patient_id, "QUIXOTE"
    other.save_as(tmp_path / "in" / "b.dcm")
    run_deid(tmp_path / "in", tmp_path / "out")
    out = {str(o.Modality): o for o in map(pydicom.dcmread, _released(tmp_path / "out"))}
    assert out["CT"].SpecificCharacterSet == charset
    assert out["CT"].Manufacturer == "Müller Medizintechnik"
    assert set(out) == {"CT", "REMOVED"}


# --- 6: a voice recording whose class is only in the file meta -------------------------------------------------------

VOICE = "1.2.840.10008.5.1.4.1.1.9.4.1"


@pytest.mark.parametrize("meta_class", [VOICE, "1.2.3.4.5.6.7"])
def test_waveforms_of_a_voice_or_unknown_class_in_the_file_meta_are_quarantined(
    shared: Path, tmp_path: Path, meta_class: str
) -> None:
    """The corpus ECG with SOPClassUID removed and Basic Voice Audio (or an unregistered class) only in the file meta
    was released and passed the check; the ECG itself (a registered waveform class) is still released."""
    (tmp_path / "in").mkdir()
    ecg = pydicom.dcmread(shared / "dicom" / "pydicom" / "waveform_ecg.dcm")
    ecg.save_as(tmp_path / "in" / "ecg.dcm")
    au = pydicom.dcmread(shared / "dicom" / "pydicom" / "waveform_ecg.dcm")
    au.SOPInstanceUID = au.file_meta.MediaStorageSOPInstanceUID = au.SOPInstanceUID + ".9"
    au.file_meta.MediaStorageSOPClassUID = meta_class
    del au.SOPClassUID
    au.save_as(tmp_path / "in" / "voice.dcm")
    result = run_deid(tmp_path / "in", tmp_path / "out", scan_pixels=True)
    assert result.count("quarantined") == 1 and result.count("written") == 1
    released = [pydicom.dcmread(p) for p in _released(tmp_path / "out")]
    assert [str(o.SOPClassUID) for o in released] == [str(ecg.SOPClassUID)]


def test_the_check_does_not_certify_a_voice_recording_named_in_the_file_meta_only(
    shared: Path, tmp_path: Path
) -> None:
    """A released object without SOPClassUID whose file meta says Basic Voice Audio was certified by the check."""
    (tmp_path / "in").mkdir()
    pydicom.dcmread(shared / "dicom" / "pydicom" / "waveform_ecg.dcm").save_as(tmp_path / "in" / "ecg.dcm")
    run_deid(tmp_path / "in", tmp_path / "out")
    [released] = _released(tmp_path / "out")
    voice = pydicom.dcmread(released)
    voice.file_meta.MediaStorageSOPClassUID = VOICE
    del voice.SOPClassUID
    voice.save_as(released)
    refresh_digests(tmp_path / "out")
    result = check_tree(tmp_path / "in", tmp_path / "out", ocr=False)
    assert [name for name, _ in result.files_unchecked] == [released.relative_to(tmp_path / "out").as_posix()]


# --- 7: pixel data inside a kept sequence ----------------------------------------------------------------------------


def _ct_with_nested_xray(shared: Path, path: Path) -> pydicom.Dataset:
    """The rt-utils CT of the JSL chest X-ray's patient, that X-ray (burned-in name) as Pixel Data of a Derivation
    Image Sequence item."""
    xr = pydicom.dcmread(next((shared / "deid" / "burned_in_text_jsl").glob("292821506_*.dcm")))
    ct = pydicom.dcmread(shared / RT / "ct_1.dcm")
    ct.PatientName, ct.PatientID = xr.PatientName, xr.PatientID
    item = pydicom.Dataset()
    for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
               "PhotometricInterpretation", "PixelData"):  # fmt: skip
        setattr(item, kw, getattr(xr, kw))
    ct.DerivationImageSequence = [item]
    path.parent.mkdir(parents=True, exist_ok=True)
    ct.save_as(path)
    return ct


def test_pixel_data_inside_a_sequence_item_is_not_released(shared: Path, tmp_path: Path) -> None:
    """The X-ray nested in a Derivation Image Sequence item was released byte for byte and certified."""
    _ct_with_nested_xray(shared, tmp_path / "in" / "ct.dcm")
    result = run_deid(tmp_path / "in", tmp_path / "out")
    [released] = _released(tmp_path / "out")
    out = pydicom.dcmread(released)
    assert "DerivationImageSequence" in out and "Rows" in out.DerivationImageSequence[0]
    assert "PixelData" not in out.DerivationImageSequence[0] and "PixelData" in out
    assert sum(r.actions.get("nested pixel data X", 0) for r in result.records) == 1


def test_the_check_does_not_certify_nested_pixel_data(shared: Path, tmp_path: Path) -> None:
    """A released file holding pixel data in a sequence item (not OCRed) is reported as pixels NOT checked."""
    (tmp_path / "in").mkdir()
    pydicom.dcmread(shared / RT / "ct_1.dcm").save_as(tmp_path / "in" / "ct.dcm")
    run_deid(tmp_path / "in", tmp_path / "out")
    [released] = _released(tmp_path / "out")
    nested = _ct_with_nested_xray(shared, tmp_path / "x" / "ct.dcm").DerivationImageSequence
    out = pydicom.dcmread(released)
    out.DerivationImageSequence = nested
    out.save_as(released)
    refresh_digests(tmp_path / "out")
    result = check_tree(tmp_path / "in", tmp_path / "out", ocr=False)
    rel = released.relative_to(tmp_path / "out").as_posix()
    assert (rel, "pixel data inside a sequence item: not OCRed") in result.pixels_unchecked


# --- 8: a listed output name holding other content -------------------------------------------------------------------


@pytest.mark.parametrize("with_key", [False, True])
def test_a_listed_output_holding_other_content_is_refused(shared: Path, tmp_path: Path, with_key: bool) -> None:
    """Another patient's untouched original copied over a listed output name passed the check, with and without
    the key: its SHA-256 is not the manifest's output_sha256."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("1-01.dcm", "1-02.dcm"):
        (src / name).write_bytes((shared / "deid" / "tcia_pseudo_phi_mr" / "original" / name).read_bytes())
    run_deid(src, tmp_path / "out")
    target = _released(tmp_path / "out")[0]
    target.write_bytes((shared / "dicom" / "pydicom" / "MR_small.dcm").read_bytes())
    with pytest.raises(UsageError, match="not the one the run wrote") as error:
        check_tree(src, tmp_path / "out", ocr=False, secret=SECRET if with_key else None)
    assert error.value.path == target


# --- 9: an OUTPUT that cannot be created -----------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["/proc/medseg_out", "/proc/medseg_out/deeper"])
def test_an_output_that_cannot_be_created_is_a_usage_error(shared: Path, tmp_path: Path, out: str) -> None:
    """OUTPUT under /proc was 'internal error ... report it' (exit 4); now a one-line usage error naming it."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "ct.dcm").write_bytes((shared / RT / "ct_1.dcm").read_bytes())
    with pytest.raises(UsageError, match="output folder cannot be created") as error:
        run_deid(src, Path(out))
    assert error.value.path == Path(out) and "\n" not in str(error.value)


# --- 10: an emptied INPUT on a resume ---------------------------------------------------------------------------------


def test_an_empty_input_into_a_release_is_refused_and_removes_nothing(shared: Path, tmp_path: Path) -> None:
    """An unmounted share (its mount point an empty folder) re-run into the OUTPUT deleted the whole release as
    withdrawn, exit 0; now it is refused (exit 3) and every released file stays."""
    src = tmp_path / "mnt"
    src.mkdir()
    for name in ("1-01.dcm", "1-02.dcm"):
        (src / name).write_bytes((shared / "deid" / "tcia_pseudo_phi_mr" / "original" / name).read_bytes())
    run_deid(src, tmp_path / "out")
    before = _released(tmp_path / "out")
    for path in src.iterdir():
        path.unlink()
    with pytest.raises(InvalidInputError, match="INPUT holds no file") as error:
        run_deid(src, tmp_path / "out")
    assert error.value.exit_code == 3 and error.value.path == src
    assert _released(tmp_path / "out") == before and len(before) == 2
