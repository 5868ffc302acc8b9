"""DICOM as hospital exports hold it (nineteenth-session review), built from the real CHAOS CT series: each test
failed on the code before its fix."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cli_run import run_in_process
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.errors import InvalidInputError
from medseg.infer.cases import discover_cases
from medseg.io import read_image
from medseg.io.series import choose_series, scan_folder
from medseg.writers.seg import SegAlgorithm, build_seg

CHAOS = "ct/chaos_ct_sample/dicom"
ALGO = SegAlgorithm("medseg-test-liver", "1.2.3", "medseg 0.1.0")


@pytest.fixture(scope="module")
def chaos(shared: Path) -> list[pydicom.Dataset]:
    """The real series, in position order (78 slices)."""
    return sorted((pydicom.dcmread(f) for f in (shared / CHAOS).glob("*.dcm")),
                  key=lambda d: float(d.ImagePositionPatient[2]))  # fmt: skip


def _write(datasets: list[pydicom.Dataset], folder: Path, prefix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{prefix}{i:03d}.dcm")
    return folder


def _edited(chaos: list[pydicom.Dataset], change) -> list[pydicom.Dataset]:
    out = []
    for i, ds in enumerate(chaos):
        ds = copy.deepcopy(ds)
        change(i, ds)
        out.append(ds)
    return out


def test_a_stray_end_slice_of_another_matrix_or_frame_of_reference_is_refused(chaos, tmp_path: Path) -> None:
    def matrix(i: int, ds: pydicom.Dataset) -> None:
        if i == len(chaos) - 1:
            ds.PixelData = ds.pixel_array[::2, ::2].copy().tobytes()
            ds.Rows, ds.Columns = 256, 256

    def frame_of_reference(i: int, ds: pydicom.Dataset) -> None:
        if i == 0:
            ds.FrameOfReferenceUID = generate_uid()

    def no_orientation(i: int, ds: pydicom.Dataset) -> None:
        if i == 0:
            del ds.ImageOrientationPatient

    for name, change in (("matrix", matrix), ("for", frame_of_reference), ("iop", no_orientation)):
        folder = _write(_edited(chaos, change), tmp_path / name)
        with pytest.raises(InvalidInputError, match="stray slice"):
            read_image(folder)


def test_slice_jitter_the_reader_accepts_gives_a_seg(chaos, tmp_path: Path) -> None:
    """Positions 0.015 mm off on odd slices and cosines 4e-4 apart: read (within the reader's tolerances), so the SEG
    is written; it stopped with exit 4 'report this as a bug' and the label map was lost."""

    def position(i: int, ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, round(z + (0.015 if i % 2 else 0.0), 4)]

    def orientation(i: int, ds: pydicom.Dataset) -> None:
        e = 4e-4 if i % 2 else 0.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, round(float(np.cos(e)), 7), round(float(np.sin(e)), 7)]

    for name, change in (("pos", position), ("iop", orientation)):
        volume = read_image(_write(_edited(chaos, change), tmp_path / name))
        labels = np.zeros(volume.shape, np.uint8)
        labels[200:300, 200:300, 30:40] = 1
        seg = build_seg(labels, volume, {1: "liver"}, ALGO)
        assert int(seg.NumberOfFrames) == 10


def test_a_slice_drifting_off_the_grid_is_refused_not_misplaced(chaos, tmp_path: Path) -> None:
    """Steps each within tolerance that add up to a drift of a fifth of a slice: refused when read."""

    def drift(i: int, ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, round(z + 0.015 * min(i, 30) - 0.015 * max(0, i - 30), 4)]

    with pytest.raises(InvalidInputError, match="drift off a regular grid"):
        read_image(_write(_edited(chaos, drift), tmp_path / "drift"))


def test_a_readable_series_is_chosen_before_a_larger_unreadable_one(chaos, tmp_path: Path) -> None:
    study = _write([copy.deepcopy(ds) for ds in chaos], tmp_path / "study")
    series_uid = generate_uid()
    bolus = []
    for i in range(100):  # bolus tracking: 100 images at one table position
        ds = copy.deepcopy(chaos[40])
        ds.SeriesInstanceUID, ds.SeriesDescription, ds.SeriesNumber = series_uid, "Bolus tracking", 90
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        bolus.append(ds)
    _write(bolus, study, "mon")
    volume = read_image(study)
    assert volume.shape[2] == len(chaos)
    assert any("Bolus" in n or "not read: 99 duplicate" in n for n in volume.meta.notes), volume.meta.notes
    cases, _ = discover_cases(study)
    assert len(cases) == 1 and cases[0].load().shape[2] == len(chaos)
    assert any("not readable: 99 duplicate slice position(s)" in n for n in cases[0].notes)
    scan = scan_folder(study)
    assert choose_series(scan.series).n_slices == len(chaos)  # the one-position series covers 0 mm head-foot too


def test_two_reconstructions_with_empty_series_uids_are_not_interleaved(chaos, tmp_path: Path) -> None:
    def first(i: int, ds: pydicom.Dataset) -> None:
        ds.SeriesInstanceUID = ""
        ds.SeriesNumber = 2

    def second(i: int, ds: pydicom.Dataset) -> None:
        first(i, ds)
        ds.SeriesNumber = 3
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 1.0]

    folder = _write(_edited(chaos, first), tmp_path / "s")
    _write(_edited(chaos, second), folder, "b")
    assert read_image(folder).shape[2] == len(chaos)


def test_two_different_images_under_one_sop_instance_uid_are_refused(chaos, tmp_path: Path) -> None:
    def clash(i: int, ds: pydicom.Dataset) -> None:
        if i == 11:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = chaos[10].SOPInstanceUID

    with pytest.raises(InvalidInputError, match="same SOPInstanceUID"):
        read_image(_write(_edited(chaos, clash), tmp_path / "dup"))


def test_a_two_patient_study_in_a_batch_is_a_failed_case_not_dropped(chaos, tmp_path: Path, capsys) -> None:
    _write([copy.deepcopy(ds) for ds in chaos[:40]], tmp_path / "in" / "studyA")
    study, series = generate_uid(), generate_uid()

    def other_patient(i: int, ds: pydicom.Dataset) -> None:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = "PAT-B-MERGED" if i == 20 else "PAT-B"

    _write(_edited(chaos[:40], other_patient), tmp_path / "in" / "studyB")
    cases, _ = discover_cases(tmp_path / "in")
    assert sorted(c.name for c in cases) == ["studyA", "studyB"]
    refused = next(c for c in cases if c.name == "studyB")
    with pytest.raises(InvalidInputError, match="2 different PatientID"):
        refused.load()
    code, _, err = run_in_process(["infer", str(tmp_path / "in" / "studyB"), "--organ", "liver", "--out",
                                   str(tmp_path / "out")], capsys)  # fmt: skip
    assert code == 3, err
    summary = json.loads((tmp_path / "out" / "studyB" / "summary.json").read_text())
    assert summary["status"] == "failed" and "2 different PatientID" in summary["failure"]


def test_a_concatenation_part_is_refused_not_read_as_the_scan(chaos, tmp_path: Path) -> None:
    import highdicom as hd

    sources = [copy.deepcopy(ds) for ds in chaos]
    for ds in sources:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    whole = hd.legacy.LegacyConvertedEnhancedCTImage(sources, series_instance_uid=generate_uid(), series_number=9,
                                                     sop_instance_uid=generate_uid(), instance_number=1)  # fmt: skip
    whole.save_as(tmp_path / "whole.dcm")
    whole = pydicom.dcmread(tmp_path / "whole.dcm")
    n, frames, concatenation = int(whole.NumberOfFrames), whole.pixel_array, generate_uid()
    (tmp_path / "in").mkdir()
    for part, (a, b) in enumerate(((0, n // 2), (n // 2, n))):
        ds = copy.deepcopy(whole)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ConcatenationUID, ds.SOPInstanceUIDOfConcatenationSource = concatenation, whole.SOPInstanceUID
        ds.InConcatenationNumber, ds.InConcatenationTotalNumber, ds.ConcatenationFrameOffsetNumber = part + 1, 2, a
        ds.NumberOfFrames = b - a
        ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(list(whole.PerFrameFunctionalGroupsSequence)[a:b])
        ds.PixelData = np.ascontiguousarray(frames[a:b]).tobytes()
        ds.save_as(tmp_path / "in" / f"part{part + 1}.dcm")
    assert read_image(tmp_path / "whole.dcm").shape[2] == n
    cases, _ = discover_cases(tmp_path / "in")
    assert len(cases) == 1
    with pytest.raises(InvalidInputError, match="concatenation"):
        cases[0].load()
    with pytest.raises(InvalidInputError, match="concatenation"):
        read_image(tmp_path / "in" / "part1.dcm")


def test_pixel_padding_is_air_not_bright(chaos, tmp_path: Path) -> None:
    """Unsigned storage with intercept -1024 and padding 0xF830 outside the body: the padding read +62512 HU."""
    base = read_image(_write([copy.deepcopy(ds) for ds in chaos], tmp_path / "base"))
    outside = np.asarray(base.array) <= -1000
    assert outside.any()

    def pad(i: int, ds: pydicom.Dataset) -> None:
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
        stored[outside[:, :, i].T] = 0xF830
        ds.PixelRepresentation, ds.RescaleIntercept, ds.RescaleSlope = 0, -1024, 1
        ds.BitsStored, ds.HighBit = 16, 15
        ds.PixelData = stored.tobytes()
        ds.add_new("PixelPaddingValue", "US", 0xF830)

    padded = read_image(_write(_edited(chaos, pad), tmp_path / "pad"))
    array = np.asarray(padded.array)
    assert array.max() < 4000, "padding read as image values"
    assert np.all(array[outside] == array[~outside].min())
    assert any("padding pixel(s)" in n for n in padded.meta.notes)


def test_a_patient_name_the_seg_cannot_copy_faithfully_is_noted(chaos, tmp_path: Path) -> None:
    def latin1_declared_utf8(i: int, ds: pydicom.Dataset) -> None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds["PatientName"].value = "M\xfcller^J\xfcrgen".encode("latin-1")

    volume = read_image(_write(_edited(chaos, latin1_declared_utf8), tmp_path / "cs"))
    labels = np.zeros(volume.shape, np.uint8)
    labels[200:300, 200:300, 30:40] = 1
    notes: list[str] = []
    build_seg(labels, volume, {1: "liver"}, ALGO, notes=notes)
    assert any("PatientName" in n and "cannot decode" in n for n in notes), notes
    shutil.rmtree(tmp_path / "cs")
