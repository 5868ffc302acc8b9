"""Series discovery: grouping without UIDs, classification of non-volume objects, choosing, and the CLI listing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InvalidInputError, UsageError
from medseg.io import find_series, read_dicom_series, read_image, read_nifti

TS_CT = "dicom/ct_series_totalsegmentator"


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSEG_AUDIT_DIR": str(tmp_path / "audit")}
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=120, env=env)


def test_series_with_empty_uids_is_grouped_by_geometry_with_a_stable_key(shared: Path) -> None:
    first = find_series(shared / TS_CT)
    again = find_series(shared / TS_CT)
    assert len(first) == 1
    s = first[0]
    assert s.is_volume and s.n_slices == 20 and s.modality == "CT"
    assert s.series_instance_uid == "" and s.study_uid == "" and s.frame_of_reference_uid
    assert s.key.startswith("auto-") and s.key == again[0].key
    vol = read_image(shared / TS_CT, series_key=s.key)
    assert vol.shape == (512, 512, 20)
    assert read_dicom_series(s).geometry == vol.geometry


def test_files_without_extension_and_non_dicom_files_are_noted(shared: Path) -> None:
    vol = read_image(shared / "dicom/dicom2nifti/generic/anatomical")
    assert vol.shape == (256, 256, 4)
    assert any("not a DICOM file" in n and "001_ground_truth.nii.gz" in n for n in vol.meta.notes)


@pytest.mark.parametrize(
    ("rel", "kind"),
    [
        ("dicom/seg/highdicom", "DICOM SEG"),
        ("dicom/rtstruct/rt-utils/mock_data", "RTSTRUCT"),
        ("dicom/pydicom/dicomdirtests", "DICOMDIR"),
        ("dicom/pydicom/dicomdirtests/98892001/CT2N", "localizer/scout"),
        ("dicom/pydicom", "Structured Report"),
        ("dicom/pydicom", "RT Plan"),
        ("dicom/pydicom", "RT Dose"),
        ("dicom/pydicom", "Waveform"),
        ("dicom/seg/dcmqi", "Real World Value Mapping"),
        ("deid/burned_in_text_jsl", "modality DX"),
        ("deid/burned_in_text_jsl", "Secondary Capture"),
    ],
)
def test_non_volume_objects_are_classified_with_a_reason(shared: Path, rel: str, kind: str) -> None:
    series = find_series(shared / rel)
    skipped = [s for s in series if not s.is_volume]
    assert any(kind in (s.skip_reason or "") for s in skipped), [s.skip_reason for s in skipped]


def test_study_with_ct_and_rtstruct_reads_the_ct_and_notes_the_rest(shared: Path) -> None:
    vol = read_image(shared / "dicom/rtstruct/rt-utils/mock_data")
    assert vol.meta.modality == "CT" and vol.shape[2] == 2
    assert any("RTSTRUCT" in n for n in vol.meta.notes)


def test_folder_with_several_volumes_picks_the_largest_or_the_requested(shared: Path) -> None:
    folder = shared / "dicom/seg/dcmqi"
    volumes = [s for s in find_series(folder) if s.is_volume]
    assert len(volumes) >= 4
    vol = read_image(folder)
    assert vol.shape[2] == max(s.n_slices for s in volumes)
    assert any("volume series" in n and "--series" in n for n in vol.meta.notes)
    other = volumes[-1]
    chosen = read_image(folder, series_key=other.key)
    assert set(chosen.meta.source_files) == set(other.files)
    with pytest.raises(UsageError, match="not found"):
        read_image(folder, series_key="1.2.3.4.no.such.series")
    with pytest.raises(UsageError, match="only be chosen from a folder"):
        read_image(other.files[0], series_key=other.key)
    seg = next(s for s in find_series(folder) if s.modality == "SEG")
    with pytest.raises(InvalidInputError, match="not a 3D image volume"):
        read_image(folder, series_key=seg.key)


def test_volume_meta_has_qc_facts_and_no_patient_identity(shared: Path) -> None:
    vol = read_image(shared / "deid/tcia_pseudo_phi_mr/original")
    extra = vol.meta.extra
    for key in ("slice_thickness", "bits_stored", "photometric_interpretation", "manufacturer", "image_type"):
        assert key in extra, key
    text = json.dumps(extra, default=str).upper()
    for phi in ("MILLER", "BEVERLY", "9894340694", "19310227", "SMITH", "597B9256"):
        assert phi not in text
    assert any("gaps between slices" in n for n in vol.meta.notes)
    assert read_image(shared / TS_CT).meta.notes[0].startswith("SliceThickness 3 mm > slice spacing 2 mm")


def test_cli_series_lists_classification_and_json(shared: Path, tmp_path: Path) -> None:
    res = run_cli("series", str(shared / "dicom/rtstruct/rt-utils"), tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "VOLUME" in res.stdout and "RTSTRUCT" in res.stdout
    res = run_cli("series", str(shared / "dicom/dicom2nifti"), tmp_path=tmp_path)
    tilted = [line for line in res.stdout.splitlines() if "gantry tilt" in line]
    assert len(tilted) == 1 and "VOLUME, unreadable" in tilted[0]
    res = run_cli("series", str(shared / TS_CT), "--json", tmp_path=tmp_path)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["is_volume"] and rows[0]["n_slices"] == 20 and rows[0]["series"].startswith("auto-")
    assert rows[0]["problem"] is None
    assert (tmp_path / "audit").exists()


def test_cli_convert_writes_nifti_equal_to_the_dicom(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "ct.nii.gz"
    res = run_cli("convert", str(shared / TS_CT), str(out), tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "SliceThickness" in res.stderr
    nii, dcm = read_nifti(out), read_image(shared / TS_CT)
    assert nii.geometry.same_grid(dcm.geometry, 1e-3)
    np.testing.assert_array_equal(nii.array, dcm.array)
    res = run_cli("convert", str(shared / TS_CT), str(out), tmp_path=tmp_path)
    assert res.returncode == 2 and "--overwrite" in res.stderr
    res = run_cli("convert", str(shared / TS_CT), str(tmp_path / "ct.txt"), tmp_path=tmp_path)
    assert res.returncode == 2 and "must end in .nii or .nii.gz" in res.stderr  # a usage error, before any read
    assert "SliceThickness" not in res.stderr and not (tmp_path / "ct.txt").exists()


def test_cli_convert_accepts_series_key_from_listing(shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "study"
    shutil.copytree(shared / "dicom/seg/dcmqi/segmentations", src)
    key = next(s.key for s in find_series(src) if s.is_volume and s.n_slices == 3 and len(s.files) == 1)
    res = run_cli("convert", str(src), str(tmp_path / "mf.nii.gz"), "--series", key, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert read_nifti(tmp_path / "mf.nii.gz").shape[2] == 3


def test_two_echoes_in_one_series_become_two_volumes(shared: Path, tmp_path: Path) -> None:
    import pydicom

    src = shared / "dicom/mr_series_penn_prisma_phantom"
    for echo in (1, 2):
        for path in src.iterdir():
            ds = pydicom.dcmread(path)
            ds.EchoNumbers = echo
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            base = np.minimum(ds.pixel_array, 2**ds.BitsStored - 21)
            ds.PixelData = (base + 10 * echo).astype(ds.pixel_array.dtype).tobytes()
            ds.save_as(tmp_path / f"e{echo}_{path.name}")
    volumes = [s for s in find_series(tmp_path) if s.is_volume]
    assert [s.n_slices for s in volumes] == [32, 32]
    assert {s.series_instance_uid for s in volumes} == {volumes[0].series_instance_uid}
    second = read_image(tmp_path, series_key=volumes[1].key)
    first = read_image(tmp_path, series_key=volumes[0].key)
    assert second.geometry == first.geometry
    assert np.all(np.abs(second.array.astype(int) - first.array.astype(int)) == 10)


@pytest.mark.parametrize("keyword", ["PatientID", "PatientName"])
def test_a_series_whose_slices_name_two_patients_is_never_read(shared: Path, tmp_path: Path,
                                                                          keyword: str) -> None:  # fmt: skip
    """Two patients behind one SeriesInstanceUID and grid (an anonymiser that fixes UIDs): a reviewer got one volume
    and one SEG with patient A's identity referencing patient B's slices. Now the series is skipped with the reason,
    and reading the folder is refused (exit 3)."""
    import pydicom

    files = sorted((shared / "ct/chaos_ct_sample/dicom").glob("*.dcm"))[20:40]
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if n >= 10:
            setattr(ds, keyword, {"PatientID": "OTHER-ID", "PatientName": "OTHER^PATIENT"}[keyword])
        ds.save_as(tmp_path / f.name)
    (info,) = find_series(tmp_path)
    assert not info.is_volume and info.n_slices == 20
    assert info.skip_reason == f"its slices carry 2 different {keyword} values (two patients in one series)"
    with pytest.raises(InvalidInputError, match=f"no 3D image series found; .* 2 different {keyword} values"):
        read_image(tmp_path)


def test_one_patients_series_with_a_study_uid_per_file_is_read_with_a_note(shared: Path) -> None:
    """SimpleITK-written slices, each with its own StudyInstanceUID (real file in the shared data): one patient, so
    read, and the note says which study the outputs name."""
    (info,) = find_series(shared / "dicom/rtstruct/rt-utils/oriented_data")
    assert info.is_volume
    assert "its slices carry 3 different StudyInstanceUID values; outputs name the first slice's study" in info.notes
