"""Bad input gives InvalidInputError with a specific message, and through `medseg convert` exit code 3 on one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.errors import InvalidInputError
from medseg.io import read_dicom_series, read_image

TS_CT = "dicom/ct_series_totalsegmentator"


def copy_series(shared: Path, rel: str, dest: Path) -> list[Path]:
    """Copy a real series into tmp; returns the copies sorted by position along the slice normal."""
    shutil.copytree(shared / rel, dest)
    files = [p for p in dest.iterdir() if p.is_file()]
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def edit_header(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def expect_invalid(path: Path, *fragments: str) -> str:
    with pytest.raises(InvalidInputError) as info:
        read_image(path)
    text = info.value.one_line()
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert "\n" not in text
    return text


def cli_convert(src: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSEG_AUDIT_DIR": str(tmp_path / "audit")}
    out = tmp_path / "out.nii.gz"
    res = subprocess.run(
        [sys.executable, "-m", "medseg", "convert", str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert not out.exists()
    return res


def assert_cli_exit_3(src: Path, tmp_path: Path, fragment: str) -> None:
    res = cli_convert(src, tmp_path)
    assert res.returncode == 3, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_not_dicom_file_and_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image\n")
    expect_invalid(tmp_path / "notes.txt", "not a DICOM file")
    expect_invalid(tmp_path, "no DICOM files found", "notes.txt")
    assert_cli_exit_3(tmp_path, tmp_path, "no DICOM files found")


def test_gzip_dicom_is_not_read_as_dicom(shared: Path) -> None:
    expect_invalid(shared / "dicom/pydicom/zipMR.gz", "not a DICOM file")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    expect_invalid(tmp_path / "empty", "folder is empty")
    assert_cli_exit_3(tmp_path / "empty", tmp_path, "folder is empty")


def test_missing_input(tmp_path: Path) -> None:
    expect_invalid(tmp_path / "nothing-here", "input not found")


@pytest.mark.parametrize(
    ("rel", "found"),
    [
        ("dicom/seg/highdicom", "DICOM SEG"),
        ("dicom/rtstruct/pydicom", "RTSTRUCT"),
        ("dicom/pydicom/dicomdirtests/TINY_ALPHA", "no pixel data"),
    ],
)
def test_folder_with_only_non_image_objects_names_what_it_found(
    shared: Path, tmp_path: Path, rel: str, found: str
) -> None:
    expect_invalid(shared / rel, "no 3D image series found", found)
    assert_cli_exit_3(shared / rel, tmp_path, found)


def test_single_slice_file_and_folder(shared: Path, tmp_path: Path) -> None:
    one = sorted((shared / TS_CT).iterdir())[0]
    expect_invalid(one, "single slice", "whole series")
    (tmp_path / "one").mkdir()
    shutil.copy(one, tmp_path / "one" / one.name)
    expect_invalid(tmp_path / "one", "single slice")
    assert_cli_exit_3(tmp_path / "one", tmp_path, "single slice")


def test_missing_slice_says_where_the_gap_is(shared: Path, tmp_path: Path) -> None:
    files = copy_series(shared, TS_CT, tmp_path / "ct")
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files]
    files[7].unlink()
    text = expect_invalid(
        tmp_path / "ct", "missing slice", f"{z[6]:.3f} and {z[8]:.3f} mm", files[6].name, files[8].name, "4.000 mm"
    )
    assert "spacing is 2.000 mm" in text
    assert_cli_exit_3(tmp_path / "ct", tmp_path, "missing slice")


def test_duplicate_positions(shared: Path, tmp_path: Path) -> None:
    files = copy_series(shared, TS_CT, tmp_path / "ct")  # empty SOPInstanceUIDs: copies cannot be told apart
    shutil.copy(files[3], tmp_path / "ct" / "copy_of_slice")
    expect_invalid(tmp_path / "ct", "duplicate slice position", files[3].name)


def test_identical_copies_are_ignored_but_different_instances_at_one_position_are_not(
    shared: Path, tmp_path: Path
) -> None:
    src = shared / "dicom/mr_series_penn_prisma_phantom"
    shutil.copytree(src, tmp_path / "mr")
    one = sorted((tmp_path / "mr").iterdir())[5]
    shutil.copy(one, tmp_path / "mr" / f"{one.name} 2.dcm")
    vol = read_image(tmp_path / "mr")
    assert vol.shape[2] == 32
    assert any("identical copy" in n for n in vol.meta.notes)
    edit_header(
        tmp_path / "mr" / f"{one.name} 2.dcm", lambda ds: setattr(ds, "SOPInstanceUID", pydicom.uid.generate_uid())
    )
    expect_invalid(tmp_path / "mr", "duplicate slice position")


def test_inconsistent_spacing(shared: Path, tmp_path: Path) -> None:
    files = copy_series(shared, TS_CT, tmp_path / "ct")

    def shift(ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.4]

    edit_header(files[10], shift)
    expect_invalid(tmp_path / "ct", "inconsistent slice spacing", files[10].name)
    assert_cli_exit_3(tmp_path / "ct", tmp_path, "inconsistent slice spacing")


def test_mixed_orientation(shared: Path, tmp_path: Path) -> None:
    files = copy_series(shared, TS_CT, tmp_path / "ct")

    def rotate(ds: pydicom.Dataset) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9848077530, -0.1736481777]

    edit_header(files[5], rotate)
    expect_invalid(tmp_path / "ct", "mixed orientations", files[5].name, "--series")
    assert_cli_exit_3(tmp_path / "ct", tmp_path, "mixed orientations")
    with pytest.raises(InvalidInputError, match="mixed slice orientations"):
        read_dicom_series(files)


def test_gantry_tilt_real_series_is_rejected_not_misplaced(shared: Path, tmp_path: Path) -> None:
    folder = shared / "dicom/dicom2nifti/failing/gantrytilting/001"
    expect_invalid(folder, "gantry tilt", "degrees")
    assert_cli_exit_3(folder, tmp_path, "gantry tilt")


def test_corrupt_jpeg2000_stream(shared: Path, tmp_path: Path) -> None:
    files = copy_series(shared, TS_CT, tmp_path / "ct")
    data = bytearray(files[4].read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")
    assert start > 0
    data[start : start + 200] = np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8).tobytes()
    files[4].write_bytes(bytes(data))
    expect_invalid(tmp_path / "ct", "cannot decode pixel data", "JPEG 2000", files[4].name)
    assert_cli_exit_3(tmp_path / "ct", tmp_path, "cannot decode pixel data")


def test_truncated_compressed_file(shared: Path, tmp_path: Path) -> None:
    files = copy_series(shared, TS_CT, tmp_path / "ct")
    data = files[9].read_bytes()
    files[9].write_bytes(data[: len(data) // 2])
    text = expect_invalid(tmp_path / "ct", "truncated", files[9].name)
    assert "would then lack a slice" in text  # the damaged file is named, not only the gap it leaves
    assert_cli_exit_3(tmp_path / "ct", tmp_path, "truncated")


def test_truncated_uncompressed_file(shared: Path, tmp_path: Path) -> None:
    src = shared / "dicom/mr_series_penn_prisma_phantom"
    shutil.copytree(src, tmp_path / "mr")
    victim = sorted((tmp_path / "mr").iterdir())[12]
    data = victim.read_bytes()
    victim.write_bytes(data[:-100])
    expect_invalid(tmp_path / "mr", "truncated pixel data", victim.name)
    assert_cli_exit_3(tmp_path / "mr", tmp_path, "truncated pixel data")


def test_corrupt_geometry_headers_are_invalid_input(shared: Path, tmp_path: Path) -> None:
    files = copy_series(shared, TS_CT, tmp_path / "ct")
    for path in files:
        edit_header(path, lambda ds: setattr(ds, "PixelSpacing", [0, 0]))
    expect_invalid(tmp_path / "ct", "PixelSpacing [0.0, 0.0] mm", "outside the plausible")
    for path in files[:3]:
        edit_header(path, lambda ds: setattr(ds, "PixelSpacing", [0.7, 0.7]))
        edit_header(path, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]))
    with pytest.raises(InvalidInputError, match="not two orthogonal unit vectors"):
        read_dicom_series(files[:3])


def test_real_subsampled_series_is_reported_as_incomplete(shared: Path) -> None:
    """pydicom's CT2 test series keeps 4 slices of a longer scan: a reader must not stack them as contiguous."""
    expect_invalid(shared / "dicom/pydicom/dicomdirtests/77654033/CT2", "missing slice", "17106")
