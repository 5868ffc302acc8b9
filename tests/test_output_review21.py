"""Review 21 of what `medseg infer` writes (DICOM SEG, label maps, summary.json): each case is built from the shared
real CTs (the CHAOS series with pydicom, the real inference where the defect is in the pipeline), and each test
failed on the code before its fix."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from medseg.io import read_image, read_nifti
from medseg.writers.seg import SegAlgorithm, write_seg

CHAOS = "ct/chaos_ct_sample/dicom"
ALGO = SegAlgorithm("medseg-test-liver", "1.2.3", "medseg 0.1.0")
MULTI_GROUP_NAME = ("Wolfeschlegelsteinhausen^Hubert Blaine=ヴォルフェシュレーゲルシュタインハウゼン^ヒューバート"
                    "=山田^太郎")  # fmt: skip


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's Error lines for one file."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _raw_patch(path: Path, tag: tuple[int, int], old: bytes, new: bytes) -> None:
    """Replace one explicit-VR-little-endian short value in place: pydicom refuses to write the malformed values
    hospital exports hold (a decimal comma in a DS, a letter in an AS)."""
    data = path.read_bytes()
    head = struct.pack("<HH", *tag)
    start = data.index(head)
    vr = data[start + 4 : start + 6]
    assert data[start + 6 : start + 8 + len(old)] == struct.pack("<H", len(old)) + old, (tag, vr)
    path.write_bytes(data[:start] + head + vr + struct.pack("<H", len(new)) + new + data[start + 8 + len(old) :])


def _derived_series(shared: Path, dst: Path, raw: dict[tuple[int, int], tuple[bytes, bytes]], **values: object) -> Path:
    """The real CHAOS series with header `values` set, then the raw byte `raw` replacements made in every file."""
    dst.mkdir(parents=True)
    for f in sorted((shared / CHAOS).glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(dst / f.name)
        for tag, (old, new) in raw.items():
            _raw_patch(dst / f.name, tag, old, new)
    return dst


@pytest.fixture(scope="module")
def chaos_liver(shared: Path) -> np.ndarray:
    return (read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz").array > 0).astype(np.uint8)


def test_seg_of_invalid_or_over_long_source_values_is_dciodvfy_clean(shared, tmp_path, chaos_liver) -> None:
    """Item 1: decimal commas in PatientWeight/PatientSize are normalised, an invalid PatientAge is left out, an
    over-long AccessionNumber/StudyID is left empty (never cut into another identifier), a negative
    SpacingBetweenSlices is given as its absolute value: each with a note naming the attribute only."""
    folder = _derived_series(
        shared, tmp_path / "src",
        {(0x0010, 0x1030): (b"72.5", b"72,5"), (0x0010, 0x1020): (b"1.83", b"1,83"),
         (0x0010, 0x1010): (b"045Y", b"45 J")},
        PatientWeight="72.5", PatientSize="1.83", PatientAge="045Y", AccessionNumber="ACC-2019-000012345",
        StudyID="STUDY-ID-12345678", SpacingBetweenSlices="-2.0",
    )  # fmt: skip
    volume = read_image(folder)
    notes: list[str] = []
    with pytest.warns(UserWarning):  # pydicom reading the over-long source identifiers
        path = write_seg(chaos_liver, volume, {1: "liver"}, ALGO, tmp_path / "seg.dcm", notes=notes)
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    assert (seg.PatientWeight, seg.PatientSize) == (72.5, 1.83)
    assert "PatientAge" not in seg
    assert seg.AccessionNumber == "" and seg.StudyID == ""
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert measures.get("SpacingBetweenSlices", 2.0) == 2.0
    for keyword in ("PatientWeight", "PatientSize", "PatientAge", "AccessionNumber", "StudyID",
                    "SpacingBetweenSlices"):  # fmt: skip
        assert any(keyword in n for n in notes), (keyword, notes)
    for value in ("72,5", "1,83", "45 J", "ACC-2019", "STUDY-ID"):
        assert not any(value in n for n in notes), notes


def test_multi_group_patient_name_is_copied_exactly(shared, tmp_path, chaos_liver) -> None:
    """Item 2: PS3.5 limits PN to 64 characters per component group; this 72-character, three-group name is valid
    and must reach the SEG unchanged. (dciodvfy counts the whole value's 132 UTF-8 bytes against 64 and reports
    the source series and the SEG alike: a dciodvfy limitation, so dciodvfy is not asked here.)"""
    folder = _derived_series(shared, tmp_path / "src", {}, SpecificCharacterSet="ISO_IR 192",
                             PatientName=MULTI_GROUP_NAME)  # fmt: skip
    notes: list[str] = []
    path = write_seg(chaos_liver, read_image(folder), {1: "liver"}, ALGO, tmp_path / "seg.dcm", notes=notes)
    assert str(pydicom.dcmread(path, stop_before_pixels=True).PatientName) == MULTI_GROUP_NAME
    assert not any("PatientName" in n for n in notes), notes
