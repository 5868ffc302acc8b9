"""Finding the cases in an input: studies, their main series, NIfTI files, and unique output names."""

from __future__ import annotations

import shutil

import pytest
from infer_fixtures import write_negated_series

from medseg.errors import InvalidInputError
from medseg.infer.cases import discover_cases, safe_name


def test_folder_of_studies_and_nifti_files(shared, tmp_path):
    root = tmp_path / "incoming"
    shutil.copytree(shared / "dicom/ct_series_totalsegmentator", root / "patient a" / "ct")
    chaos = sorted((shared / "ct/chaos_ct_sample/dicom").iterdir())
    (root / "b").mkdir(parents=True)
    for f in chaos[10:40]:
        shutil.copy(f, root / "b" / f.name)
    write_negated_series(chaos, root / "b" / "second_series", range(10, 22))  # same study, fewer slices
    shutil.copy(shared / "ct/totalseg_example_ct_sm/image.nii.gz", root / "small.nii.gz")
    (root / "notes.txt").write_text("not an image")
    cases, notes = discover_cases(root)
    by_name = {c.name: c for c in cases}
    assert sorted(by_name) == ["b", "patient_a_ct", "small"]
    assert by_name["small"].kind == "nifti"
    main = by_name["b"].load()
    assert main.shape[2] == 30  # the study's main series: the one with most slices
    assert any("other series in this study not segmented" in n for n in by_name["b"].notes)
    assert by_name["patient_a_ct"].load().shape == (512, 512, 20)
    assert "skipped 1 file(s): not a DICOM file (e.g. notes.txt)" in notes


def test_single_inputs_and_errors(shared, tmp_path):
    cases, _ = discover_cases(shared / "ct/chaos_ct_sample/dicom")
    assert [c.name for c in cases] == ["dicom"] and cases[0].kind == "dicom"
    cases, _ = discover_cases(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    assert [c.name for c in cases] == ["image"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no image volume"):
        discover_cases(tmp_path / "empty")
    with pytest.raises(InvalidInputError, match="not found"):
        discover_cases(tmp_path / "missing")


def test_safe_names():
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("Müller, Hans/CT 1") == "M_ller_Hans_CT_1"
    assert safe_name("...") == "case"


def test_study_with_a_stray_slice_of_another_orientation_is_refused_on_load(shared, tmp_path):
    """infer reads a study exactly as `read_image` does: a slice of another orientation is not silently dropped."""
    import pydicom

    study = tmp_path / "study"
    shutil.copytree(shared / "dicom/ct_series_totalsegmentator", study)
    stray = sorted(study.iterdir())[5]
    ds = pydicom.dcmread(stray)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9848077530, -0.1736481777]
    ds.save_as(stray)
    cases, _ = discover_cases(study)
    assert len(cases) == 1
    with pytest.raises(InvalidInputError, match="mixed orientations") as err:
        cases[0].load()
    assert stray.name in str(err.value)


def test_one_study_with_its_series_in_subfolders_is_named_after_the_folder_given(shared, tmp_path):
    """`medseg infer study/` once wrote OUT/<series subfolder>/ when the series sat in a subfolder of the study."""
    study = tmp_path / "abdomen_ct"
    shutil.copytree(shared / "dicom/ct_series_totalsegmentator", study / "series 3")
    (study / "report.txt").write_text("not an image")
    cases, _ = discover_cases(study)
    assert [c.name for c in cases] == ["abdomen_ct"] and cases[0].load().shape == (512, 512, 20)
    cases, _ = discover_cases(study / "series 3")
    assert [c.name for c in cases] == ["series_3"]


def test_outputs_inside_the_input_are_never_read_back_as_cases(shared, tmp_path):
    """`medseg infer in/ --out in/results`, run again: a reviewer saw its own label maps refused (exit 5), and with
    --force segmented as CT."""
    from medseg.errors import UsageError

    root = tmp_path / "in"
    root.mkdir()
    (root / "good.nii.gz").symlink_to(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    results = root / "results" / "good"
    results.mkdir(parents=True)
    shutil.copy(shared / "ct/totalseg_example_ct_sm/liver.nii.gz", results / "liver.nii.gz")
    (results / "elsewhere.nii.gz").symlink_to(shared / "ct/chaos_ct_sample/image.nii.gz")  # a link lies where it is
    cases, notes = discover_cases(root, out=root / "results")
    assert [c.name for c in cases] == ["good"]
    assert notes == [f"2 file(s) inside the output folder {(root / 'results').resolve()} not read as input"]
    assert [c.name for c in discover_cases(root)[0]] == ["good", "results_good_elsewhere", "results_good_liver"]
    with pytest.raises(UsageError, match="--out is the input folder"):
        discover_cases(root, out=root)
    assert [c.name for c in discover_cases(root / "good.nii.gz", out=root)[0]] == ["good"]  # a file: no overlap
