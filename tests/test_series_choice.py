"""One rule picks the main series for `convert` (read_image) and `infer` (discover_cases): on a tie, the finer grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.infer.cases import discover_cases
from medseg.io import read_image
from medseg.io.series import choose_series, scan_folder


def _write_twin(src: list[Path], dst: Path, factor: int, series_uid: str) -> None:
    """The same slices at 1/factor of the matrix (pixel spacing x factor), as a second series of the same study."""
    import pydicom
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True)
    for n, f in enumerate(src):
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array
        if factor > 1:
            arr = np.ascontiguousarray(arr[::factor, ::factor])
            ds.PixelSpacing = [f"{float(v) * factor:.6g}" for v in ds.PixelSpacing]
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f"{n:03d}.dcm")


@pytest.mark.parametrize("coarse_key", ["1.2.3.1", "1.2.3.9"])  # the coarse twin sorts first, then last, by key
def test_a_tie_goes_to_the_finer_grid_in_convert_and_infer(shared, tmp_path, coarse_key):
    src = sorted((shared / "ct/chaos_ct_sample/dicom").iterdir())[20:26]
    fine_key = "1.2.3.5"
    _write_twin(src, tmp_path / "study" / "fine", 1, fine_key)
    _write_twin(src, tmp_path / "study" / "coarse", 2, coarse_key)
    scan = scan_folder(tmp_path / "study")
    assert choose_series(scan.series).key == fine_key
    assert read_image(tmp_path / "study").shape == (512, 512, 6)
    cases, _ = discover_cases(tmp_path / "study")
    assert len(cases) == 1 and cases[0].load().shape == (512, 512, 6)


def test_modality_preference_comes_before_slice_count(shared, tmp_path):
    import pydicom

    files = sorted((shared / "ct/chaos_ct_sample/dicom").iterdir())
    _write_twin(files[20:26], tmp_path / "study" / "ct", 1, "1.2.3.5")
    _write_twin(files[30:38], tmp_path / "study" / "mr", 1, "1.2.3.6")
    for f in (tmp_path / "study" / "mr").iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    scan = scan_folder(tmp_path / "study")
    assert choose_series(scan.series).key == "1.2.3.6"  # convert: the most slices
    assert choose_series(scan.series, "CT").key == "1.2.3.5"  # infer with a CT model: CT first
    assert read_image(tmp_path / "study").shape[2] == 8
    cases, _ = discover_cases(tmp_path / "study", "CT")
    assert [c.load().shape[2] for c in cases] == [6]
    assert choose_series([s for s in scan.series if not s.is_volume]) is None


def test_infer_series_takes_the_series_named_not_the_one_with_most_slices(shared, tmp_path, capsys):
    """The refusals of a mixed folder advise `--series` (see `medseg series`): `medseg infer` takes it too."""
    import json

    from cli_run import run_in_process
    from infer_fixtures import make_model_folder

    files = sorted((shared / "ct/chaos_ct_sample/dicom").iterdir())
    _write_twin(files[20:40], tmp_path / "study" / "axial", 1, "1.2.3.5")
    _write_twin(files[10:50], tmp_path / "study" / "longer", 1, "1.2.3.6")
    model = make_model_folder(tmp_path / "model", seed=1, roi=(64, 64, 64), foreground_bias=1000.0)
    args = ["infer", str(tmp_path / "study"), "--model", str(model), "--no-preview"]
    code, _, err = run_in_process([*args, "--out", str(tmp_path / "auto")], capsys)
    assert code == 0, err
    (summary,) = (tmp_path / "auto").glob("*/summary.json")
    chosen = json.loads(summary.read_text())["input"]
    assert chosen["series_instance_uid"] == "1.2.3.6" and chosen["shape"][2] == 40
    code, _, err = run_in_process([*args, "--out", str(tmp_path / "named"), "--series", "1.2.3.5"], capsys)
    assert code == 0, err
    chosen = json.loads((tmp_path / "named" / "study" / "summary.json").read_text())["input"]
    assert chosen["series_instance_uid"] == "1.2.3.5" and chosen["shape"][2] == 20
    nifti = shared / "ct/chaos_ct_sample/image.nii.gz"
    code, _, err = run_in_process(["infer", str(nifti), "--model", str(model), "--series", "1.2.3.5"], capsys)
    assert code == 2 and "--series" in err


AXIAL = np.eye(3)
CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # rows along x, columns down z, slices along y


def _series(folder: Path, direction: np.ndarray, n: int, uid: str, image_type: list[str], study: str) -> None:
    """A generated CT series of `n` slices in one study; `image_type` rewritten after writing."""
    import pydicom
    from dicom_factory import write_series

    stored = np.random.default_rng(n).integers(900, 1200, (24, 24, n), dtype=np.int16)
    for path in write_series(folder, stored, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), direction, series_uid=uid):
        ds = pydicom.dcmread(path)
        ds.ImageType = image_type
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, study + ".1"
        ds.save_as(path)


ORIGINAL = ["ORIGINAL", "PRIMARY", "AXIAL"]


@pytest.mark.parametrize(
    ("other_direction", "other_type", "why"),
    [
        (CORONAL, ["DERIVED", "SECONDARY", "REFORMATTED"], "a coronal reformat"),
        (AXIAL, ["DERIVED", "SECONDARY", "MIP"], "an axial MIP"),
        (AXIAL, ["ORIGINAL", "SECONDARY", "AXIAL"], "a secondary axial copy"),
        (CORONAL, ORIGINAL, "an original coronal reconstruction"),
    ],
)
def test_the_scanners_axial_reconstruction_wins_over_a_longer_reformat(tmp_path, other_direction, other_type, why):
    """A reformat or MIP often holds more slices than the acquired axial series; PACS users expect the SEG on the
    axial original, so slice count only decides between series of the same kind."""
    study = "1.2.826.0.1.3680043.10.1"
    _series(tmp_path / "study" / "axial", AXIAL, 8, "1.2.3.5", ORIGINAL, study)
    _series(tmp_path / "study" / "other", other_direction, 30, "1.2.3.6", other_type, study)
    scan = scan_folder(tmp_path / "study")
    assert choose_series(scan.series).key == "1.2.3.5", why
    assert read_image(tmp_path / "study").shape == (24, 24, 8)
    cases, _ = discover_cases(tmp_path / "study", "CT")
    assert len(cases) == 1 and cases[0].load().shape == (24, 24, 8)
    assert choose_series([s for s in scan.series if s.key == "1.2.3.6"]).key == "1.2.3.6"  # alone, it is still read


def test_without_an_original_series_the_longest_axial_derived_one_is_read(tmp_path):
    study = "1.2.826.0.1.3680043.10.2"
    derived = ["DERIVED", "PRIMARY", "AXIAL"]
    _series(tmp_path / "study" / "short", AXIAL, 8, "1.2.3.5", derived, study)
    _series(tmp_path / "study" / "long", AXIAL, 12, "1.2.3.7", derived, study)
    _series(tmp_path / "study" / "coronal", CORONAL, 30, "1.2.3.6", derived, study)
    assert choose_series(scan_folder(tmp_path / "study").series).key == "1.2.3.7"


def test_cli_series_names_the_series_read_by_default_and_its_kind(tmp_path, capsys):
    import json

    from cli_run import run_in_process

    study = "1.2.826.0.1.3680043.10.3"
    _series(tmp_path / "study" / "axial", AXIAL, 8, "1.2.3.5", ORIGINAL, study)
    _series(tmp_path / "study" / "coronal", CORONAL, 30, "1.2.3.6", ["DERIVED", "SECONDARY", "MPR"], study)
    code, out, err = run_in_process(["series", str(tmp_path / "study"), "--json"], capsys)
    assert code == 0, err
    rows = {r["series"]: r for r in map(json.loads, out.splitlines())}
    assert (rows["1.2.3.5"]["derived"], rows["1.2.3.5"]["axial"]) == (False, True)
    assert (rows["1.2.3.6"]["derived"], rows["1.2.3.6"]["axial"]) == (True, False)
    assert "1.2.3.5 is read by default" in err
