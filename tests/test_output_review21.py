"""Review 21 of what `medseg infer` writes (DICOM SEG, label maps, summary.json): each case is built from the shared
real CTs (the CHAOS series with pydicom, the real inference where the defect is in the pipeline), and each test
failed on the code before its fix."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.cli.main import main
from medseg.infer.qc import check_result
from medseg.io import read_image, read_nifti
from medseg.postprocess import organ_stats
from medseg.writers.seg import SegAlgorithm, write_seg
from tests.test_infer_qc import CARD

CHAOS = "ct/chaos_ct_sample/dicom"
REAL = ("chaos_ct_sample", "radcttace_0697", "radcttace_1211", "totalseg_example_ct_sm")
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


def _derived_series(
    shared: Path,
    dst: Path,
    raw: dict[tuple[int, int], tuple[bytes, bytes]] | None = None,
    columns: int | None = None,
    slices: slice = slice(None),
    **values: object,
) -> Path:
    """The real CHAOS series (its files `slices` in name order) with header `values` set, cropped to its first
    `columns` pixel columns (the geometry stays exact: the first pixel does not move), then the raw byte `raw`
    replacements made in every file."""
    dst.mkdir(parents=True)
    series = generate_uid()
    for f in sorted((shared / CHAOS).glob("*.dcm"))[slices]:
        ds = pydicom.dcmread(f)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        if columns is not None:
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, :columns]).tobytes()
            ds.Columns = columns
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(dst / f.name)
        for tag, (old, new) in (raw or {}).items():
            _raw_patch(dst / f.name, tag, old, new)
    return dst


@pytest.fixture(scope="module")
def chaos_liver(shared: Path) -> np.ndarray:
    return (read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz").array > 0).astype(np.uint8)


def test_seg_of_invalid_or_over_long_source_values_is_dciodvfy_clean(shared, tmp_path, chaos_liver) -> None:
    """Item 1: decimal commas in PatientWeight/PatientSize are normalised, an invalid PatientAge is left out, an
    over-long AccessionNumber/StudyID is carried unchanged (never cut into another identifier, nor emptied so the
    SEG no longer files with its study; dciodvfy reports only those two), a negative
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
    errors = dciodvfy_errors(path)
    length = [e for e in errors if "Length invalid" in e]
    assert [e.split(" - ")[2].split(" SH")[0] for e in length] == ["(0x0008,0x0050)", "(0x0020,0x0010)"], errors
    assert set(errors) - set(length) == {"Error - Dicom dataset contains invalid data values for Value Representations"}
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    assert (seg.PatientWeight, seg.PatientSize) == (72.5, 1.83)
    assert "PatientAge" not in seg
    assert seg.AccessionNumber == "ACC-2019-000012345" and seg.StudyID == "STUDY-ID-12345678"
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
    folder = _derived_series(shared, tmp_path / "src", SpecificCharacterSet="ISO_IR 192",
                             PatientName=MULTI_GROUP_NAME)  # fmt: skip
    notes: list[str] = []
    path = write_seg(chaos_liver, read_image(folder), {1: "liver"}, ALGO, tmp_path / "seg.dcm", notes=notes)
    assert str(pydicom.dcmread(path, stop_before_pixels=True).PatientName) == MULTI_GROUP_NAME
    assert not any("PatientName" in n for n in notes), notes


@dataclass(frozen=True)
class Run:
    """One `medseg infer` run: exit code, what it printed, and its output folder."""

    code: int
    console: str
    out: Path

    def summary(self, case: str) -> dict:
        return json.loads((self.out / case / "summary.json").read_text())


def _infer(argv: list[str], root: Path) -> Run:
    """`medseg infer` in this process with its own audit store and cache (module fixtures run before the per-test
    audit fixture), capturing what it prints."""
    out = Path(argv[argv.index("--out") + 1])
    stream = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSEG_AUDIT_DIR", str(root / "audit"))
        mp.setenv("MEDSEG_CACHE_DIR", str(root / "cache"))
        mp.setenv("MEDSEG_OPERATOR", "test-operator")
        mp.delenv("MEDSEG_AUDIT_ANCHOR_DIR", raising=False)
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            try:
                main(["infer", *argv])
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
    return Run(code, stream.getvalue(), out)


@pytest.fixture(scope="module")
def cropped_run(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The real inference of CHAOS cropped to its first 300 columns (the patient's left side of the liver is cut by
    the array's edge), whose source holds the malformed PatientBirthDate '1961-03-04' and StudyDate '12.05.2019'."""
    root = tmp_path_factory.mktemp("cropped")
    src = _derived_series(shared, root / "case", columns=300, PatientBirthDate="1961-03-04", StudyDate="12.05.2019")
    run = _infer([str(src), "--organ", "liver", "--out", str(root / "out")], root)
    assert run.code == 0, run.console
    return run


def test_liver_cut_by_the_inplane_array_edge_is_flagged_naming_it(cropped_run) -> None:
    """Item 3: cut at column 300, the liver is predicted 5 voxels (3.7 mm) short of the cut, so it never touches the
    array's edge; organ_truncated must name the left edge (the cut) besides the inferior one (CHAOS's own)."""
    flags = [f for f in cropped_run.summary("case")["qc"]["flags"] if f["code"] == "organ_truncated"]
    assert len(flags) == 1 and "left edge" in flags[0]["reason"] and "inferior edge" in flags[0]["reason"], flags


@pytest.mark.parametrize("case", REAL)
def test_the_inplane_margin_adds_no_flag_to_the_real_cases(shared, case) -> None:
    """Item 3: the reference livers of the four real CTs give the same flags with the in-plane margin as without."""
    image = read_nifti(shared / f"ct/{case}/image.nii.gz")
    truth = (read_nifti(shared / f"ct/{case}/liver.nii.gz").array > 0).astype(np.uint8)
    stats = organ_stats(truth, 1, image)
    direction = image.geometry.direction_matrix
    plain = check_result("liver", stats, image.shape, CARD, direction)
    assert check_result("liver", stats, image.shape, CARD, direction, spacing=image.spacing) == plain


def test_overwrite_leaves_the_readers_files_named_after_an_organ(shared, tmp_path) -> None:
    """Item 4: --overwrite removes what the earlier summary.json lists, never a reader's own stomach.nii.gz or
    heart.nii.gz (organs of the model card this run does not write)."""
    src, out = _derived_series(shared, tmp_path / "dicom", slices=slice(20, 60)), tmp_path / "out"
    assert _infer([str(src), "--organ", "liver", "--out", str(out)], tmp_path).code == 0
    case = out / "dicom"
    own = {name: f"the reader's {name}".encode() for name in ("stomach.nii.gz", "heart.nii.gz", "background.nii.gz")}
    for name, data in own.items():
        (case / name).write_bytes(data)
    (case / "seg.dcm").rename(case / "seg-old.dcm")  # not listed: stays; seg.dcm listed: rewritten
    run = _infer([str(src), "--organ", "liver", "--out", str(out), "--overwrite"], tmp_path)
    assert run.code == 0, run.console
    assert {n: (case / n).read_bytes() for n in own} == own
    assert {p.name for p in case.iterdir()} == {"liver.nii.gz", "seg.dcm", "preview.png", "summary.json",
                                                "seg-old.dcm", *own}  # fmt: skip


def test_malformed_dates_are_named_never_quoted(cropped_run) -> None:
    """Item 5: the source's malformed PatientBirthDate '1961-03-04' and StudyDate '12.05.2019' are named in
    summary.json's notes and on the console, but their values appear in neither."""
    text = (cropped_run.out / "case" / "summary.json").read_text()
    for where in (text, cropped_run.console):
        assert "PatientBirthDate" in where and "StudyDate" in where, where
        assert "1961" not in where and "12.05.2019" not in where, where


@pytest.mark.parametrize("below", ["", "sub"])
def test_an_out_that_is_a_file_is_a_usage_error_before_any_work(shared, tmp_path, below) -> None:
    """Item 6: --out naming a regular file (or a path below one) exits 2 naming it, before the model runs (it exited
    4, "cannot write output: File exists", after the inference); the file is left as it was."""
    (tmp_path / "outfile").write_text("not a folder")
    out = tmp_path / "outfile" / below if below else tmp_path / "outfile"
    run = _infer([str(shared / CHAOS), "--organ", "liver", "--out", str(out)], tmp_path)
    lines = [line for line in run.console.splitlines() if line.startswith("error: ")]
    assert run.code == 2 and len(lines) == 1 and "is a file, not a folder" in lines[0], run.console
    assert "segmenting" not in run.console and (tmp_path / "outfile").read_text() == "not a folder"


@pytest.mark.disk_mb(1)
def test_a_failed_write_names_the_output_not_the_staging_file(shared, tmp_path, small_disk) -> None:
    """Item 7: an output that cannot be written (a full disk) is named by its place in the case folder, in the error
    line and in summary.json's `failure`, never by the hidden staging file already removed (.tmp-dicom-XXXX/...)."""
    src = _derived_series(shared, tmp_path / "dicom", slices=slice(20, 60))
    run = _infer([str(src), "--organ", "liver", "--out", str(small_disk / "o")], tmp_path)
    lines = [line for line in run.console.splitlines() if line.startswith("error: ")]
    assert run.code == 4 and len(lines) == 1 and "No space left on device" in lines[0], run.console
    failure = json.loads((small_disk / "o" / "dicom" / "summary.json").read_text())["failure"]
    for text in (lines[0], failure):
        named = Path(text.removeprefix("error: ").split(": ")[0])
        assert named.parent == small_disk / "o" / "dicom" and ".tmp-" not in text, text
