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
