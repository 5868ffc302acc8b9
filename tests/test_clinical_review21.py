"""Clinical review 21: the series a study is segmented from, pelvis scans without a liver, and organ_truncated
evidence at an in-plane edge, each checked on real CT derived from the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.infer.cases import discover_cases
from medseg.io import read_image
from medseg.io.series import choose_series, scan_folder


def _write_series(src: list[Path], dst: Path, uid: str, kernel: str, description: str, step: int = 1,
                  split: bool = False) -> None:
    """Real CHAOS slices (128x128) as one reconstruction of a study: every `step`-th slice, or with `split` each
    slice twice at half the slice spacing (a thinner reconstruction of the same region)."""
    import pydicom
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True)
    n = 0
    for f in src[::step]:
        ds = pydicom.dcmread(f)
        arr = np.ascontiguousarray(ds.pixel_array[::4, ::4])
        ds.PixelSpacing = [f"{float(v) * 4:.6g}" for v in ds.PixelSpacing]
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
        ds.SeriesInstanceUID, ds.ConvolutionKernel, ds.SeriesDescription = uid, kernel, description
        for dz in ((0.0, 1.0) if split else (0.0,)):
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + dz]
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(dst / f"{n:03d}.dcm")
            n += 1


@pytest.fixture(scope="module")
def chaos_files(shared: Path) -> list[Path]:
    return sorted((shared / "ct/chaos_ct_sample/dicom").iterdir())


def _chosen(study: Path) -> tuple[str, str]:
    """The series `convert`'s rule picks and the kernel `infer`'s case discovery reads (the same rule, CT model)."""
    scan = scan_folder(study)
    cases, _ = discover_cases(study, "CT")
    assert len(cases) == 1
    return choose_series(scan.series, "CT").description, str(cases[0].load().meta.extra.get("convolution_kernel"))


def test_a_soft_tissue_series_is_read_before_a_sharp_kernel_one_with_more_slices(chaos_files, tmp_path) -> None:
    """Item 1: the same 154 mm of real CT as a 4 mm B30f series (39 slices) and a 2 mm B70f BONE series (78): the
    soft-tissue one is segmented (the bone kernel cut radcttace_0697's liver from 1053 to 598 ml); --series still
    takes the other."""
    _write_series(chaos_files, tmp_path / "s" / "soft", "1.2.3.2", "B30f", "ABD 4.0 B30f", step=2)
    _write_series(chaos_files, tmp_path / "s" / "sharp", "1.2.3.3", "B70f", "ABD 2.0 B70f BONE")
    assert _chosen(tmp_path / "s") == ("ABD 4.0 B30f", "B30f")
    assert read_image(tmp_path / "s").shape[2] == 39
    assert read_image(tmp_path / "s", series_key="1.2.3.3").shape[2] == 78


def test_a_chest_only_lung_series_never_beats_the_longer_soft_tissue_series(chaos_files, tmp_path) -> None:
    """Item 1: a CAP-like study, the soft-tissue series over all 154 mm and a thinner lung-kernel series of its upper
    60 mm only (more slices): the longer soft-tissue series is read, and the choice is noted with both series'
    coverage and kernel."""
    _write_series(chaos_files, tmp_path / "s" / "cap", "1.2.3.2", "B30f", "CAP 2.0 B30f")
    _write_series(chaos_files[:31], tmp_path / "s" / "lung", "1.2.3.5", "B70f", "THORAX LUNG", split=True)
    scan = scan_folder(tmp_path / "s")
    assert sorted(s.n_slices for s in scan.series) == [62, 78]
    assert _chosen(tmp_path / "s") == ("CAP 2.0 B30f", "B30f")
    cases, _ = discover_cases(tmp_path / "s", "CT")
    other = [n for n in cases[0].notes if n.startswith("other series")]
    assert len(other) == 1 and "62 mm head-foot" in other[0] and "(sharp/lung/bone)" in other[0], other


def test_a_longer_sharp_series_wins_only_beyond_the_coverage_tolerance(chaos_files, tmp_path) -> None:
    """Item 1: coverage decides before the kernel only when it differs by more than max(20 mm, 10 %): a soft series
    4 mm shorter than the sharp one is still read."""
    _write_series(chaos_files[2:], tmp_path / "s" / "soft", "1.2.3.2", "B30f", "ABD B30f")
    _write_series(chaos_files, tmp_path / "s" / "sharp", "1.2.3.3", "Br64", "ABD Br64")
    assert _chosen(tmp_path / "s")[1] == "B30f"


def _crop_1211(shared: Path, folder: Path, z0: int, z1: int) -> Path:
    """radcttace_1211 (real CT, 2.5 mm slices; its manual liver spans slices 138-200) cut to slices z0..z1-1."""
    import nibabel as nib

    img = nib.load(shared / "ct/radcttace_1211/image.nii.gz")
    affine = img.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array([0, 0, z0]) + affine[:3, 3]
    path = folder / f"crop_{z0}_{z1}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, z0:z1].astype(np.int16), affine), path)
    return path


@pytest.fixture(scope="module")
def pelvis_runs(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Real inference (--organ liver) of three crops of radcttace_1211: the hips (slices 0-59) and the lower
    abdomen (40-109), neither showing any liver, and 20-149, whose upper 30 mm hold the liver's lowest tip."""
    from tests.test_output_review21 import _infer

    root = tmp_path_factory.mktemp("pelvis")
    out: dict[str, dict] = {}
    for z0, z1 in ((0, 60), (40, 110), (20, 150)):
        src = _crop_1211(shared, root, z0, z1)
        run = _infer([str(src), "--organ", "liver", "--out", str(root / "out"), "--no-preview"], root)
        out[f"{z0}_{z1}"] = run.summary(f"crop_{z0}_{z1}") | {"exit": run.code}
    run = _infer([str(_crop_1211(shared, root, 0, 60)), "--organ", "spleen", "--out", str(root / "spleen"),
                  "--no-preview"], root)  # fmt: skip
    out["spleen_0_60"] = run.summary("crop_0_60") | {"exit": run.code}
    return out


def _codes(summary: dict) -> list[str]:
    return [f["code"] for f in summary["qc"]["flags"]]


@pytest.mark.parametrize("crop", ["0_60", "40_110"])
def test_a_pelvis_scan_without_liver_is_refused_not_served_a_small_liver(pelvis_runs, crop) -> None:
    """Item 2: the hips gave a 12.8 ml "liver" at 17 HU and the lower abdomen 31.4 ml at -112 HU (fat), both over the
    10 ml threshold and served (exit 0); a liver under 100 ml far below the scan's superior end, or with a mean HU
    outside organ_hu_range, is not a liver: organ_not_found refuses (exit 5) and no label map is served."""
    summary = pelvis_runs[crop]
    assert summary["exit"] == 5 and summary["status"] == "qc_rejected", summary["qc"]["flags"]
    assert "organ_not_found" in _codes(summary)


def test_spleen_alone_on_a_pelvis_scan_is_refused_by_the_anchor_liver(pelvis_runs) -> None:
    """The same rules apply when only the spleen is asked for: the hips scan served a 291 ml "spleen" (exit 0), its
    12.8 ml anchor "liver" passing the anchor check, which was given the liver's volume only."""
    summary = pelvis_runs["spleen_0_60"]
    assert summary["exit"] == 5 and summary["status"] == "qc_rejected", summary["qc"]["flags"]
    assert "organ_not_found" in _codes(summary)


def test_the_livers_lowest_tip_at_the_scans_superior_end_is_still_served(pelvis_runs) -> None:
    """Item 2: a scan whose superior end cuts 30 mm into the liver's tip (37 ml predicted) holds a small liver at its
    superior edge: served (exit 0), flagged organ_truncated naming the superior edge."""
    summary = pelvis_runs["20_150"]
    assert summary["exit"] == 0 and "organ_not_found" not in _codes(summary), summary["qc"]["flags"]
    assert summary["organs"][0]["volume_ml"] < 100
    truncated = [f["reason"] for f in summary["qc"]["flags"] if f["code"] == "organ_truncated"]
    assert truncated and "superior" in truncated[0]


def _crop_0697_fov(shared: Path, folder: Path, fov_mm: float) -> Path:
    """radcttace_0697 (real CT, 0.80 mm pixels, whole liver 57 mm from the right edge of its 412 mm field of view)
    reconstructed at a `fov_mm` square field of view centred on the body, as liver protocols do."""
    import nibabel as nib

    img = nib.load(shared / "ct/radcttace_0697/image.nii.gz")
    cx, cy, half = (18 + 497) // 2, (86 + 428) // 2, round(fov_mm / 0.804688 / 2)
    affine = img.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array([cx - half, cy - half, 0]) + affine[:3, 3]
    data = np.asarray(img.dataobj)[cx - half : cx + half, cy - half : cy + half].astype(np.int16)
    path = folder / f"fov{fov_mm:.0f}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def edge_runs(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Real inference of a whole liver 10.5 mm from the right edge (radcttace_0697 at a 320 mm field of view) and of
    a liver cut by the left edge (CHAOS cropped to 200 columns: predicted 13 mm short of the cut)."""
    from tests.test_output_review21 import _derived_series, _infer

    root = tmp_path_factory.mktemp("edges")
    out: dict[str, dict] = {}
    fov = _crop_0697_fov(shared, root, 320)
    run = _infer([str(fov), "--organ", "liver", "--out", str(root / "out"), "--no-preview"], root)
    out["fov320"] = run.summary("fov320") | {"exit": run.code}
    cut = _derived_series(shared, root / "cut200", columns=200)
    run = _infer([str(cut), "--organ", "liver", "--out", str(root / "out"), "--no-preview"], root)
    out["cut200"] = run.summary("cut200") | {"exit": run.code}
    return out


def _truncated(summary: dict) -> list[str]:
    return [f["reason"] for f in summary["qc"]["flags"] if f["code"] == "organ_truncated"]


def test_a_whole_liver_in_a_320_mm_field_of_view_is_not_flagged_truncated(edge_runs) -> None:
    """Item 3: 10.5 mm of body wall between the liver and the right edge is no cut: distance alone flagged it
    organ_truncated ("within 15 mm of the right edge") though its volume equals the full field of view's."""
    assert edge_runs["fov320"]["exit"] == 0
    assert _truncated(edge_runs["fov320"]) == []


def test_a_liver_cut_13_mm_beyond_its_prediction_is_still_flagged_naming_the_edge(edge_runs) -> None:
    """Item 3: the CHAOS liver cut at column 200 is predicted 13 mm short of the cut, with liver between: the image
    evidence still flags it, naming the left edge."""
    reasons = _truncated(edge_runs["cut200"])
    assert len(reasons) == 1 and "left edge" in reasons[0], reasons


@pytest.fixture(scope="module")
def circle_air_run(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real inference of radcttace_0697 with everything outside a centred 250 mm reconstruction circle stored as air
    (-1024 HU, as some scanners and exports do), which cuts 109 ml of its 927 ml manual liver."""
    import nibabel as nib

    from tests.test_output_review21 import _infer

    root = tmp_path_factory.mktemp("circle")
    img = nib.load(shared / "ct/radcttace_0697/image.nii.gz")
    data = np.asarray(img.dataobj).astype(np.int16)
    x, y = np.ogrid[: data.shape[0], : data.shape[1]]
    data[((x - 257.5) ** 2 + (y - 257) ** 2) > (125 / 0.804688) ** 2] = -1024
    path = root / "circle_air.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), path)
    run = _infer([str(path), "--organ", "liver", "--out", str(root / "out"), "--no-preview"], root)
    return run.summary("circle_air") | {"exit": run.code}


def test_a_liver_cut_by_a_circle_stored_as_air_is_flagged_truncated(circle_air_run) -> None:
    """Item 4: the same cut with the outside stored below -1500 HU was flagged; stored as -1024 it was not. A value
    held by every slice's four corners (<= -1000 HU) marks the outside of the circle holding the data."""
    reasons = _truncated(circle_air_run)
    assert circle_air_run["exit"] == 0 and len(reasons) == 1 and "field of view" in reasons[0], reasons
