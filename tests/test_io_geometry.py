"""Every real 3D DICOM series lands voxel for voxel where SimpleITK, nibabel and dicom2nifti put it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.io import read_image, read_nifti, write_nifti
from medseg.io.volume import Volume

REAL_SERIES = [
    "ct/chaos_ct_sample/dicom",
    "dicom/ct_series_totalsegmentator",
    "dicom/mr_series_penn_prisma_phantom",
    "deid/tcia_pseudo_phi_mr/original",
    "dicom/dicom2nifti/generic/anatomical/001",
    "dicom/dicom2nifti/failing/slicecount/001",
    "dicom/dicom2nifti/failing/sliceorientation/001",
    "dicom/pydicom/dicomdirtests/98892001/CT5N",
    "dicom/seg/dcmqi/segmentations/ct-3slice",
    "dicom/seg/dcmqi/segmentations/23x38x3/image",
    "dicom/seg/dcmqi/segmentations/24x38x3/image",
    "dicom/rtstruct/rt-utils/mock_data",
    "dicom/rtstruct/rt-utils/oriented_data",
]
TOL_MM = 1e-3


def sitk_series(folder: Path, series_uid: str | None) -> tuple[sitk.Image, list[str]]:
    """SimpleITK/GDCM's own reading of the same series."""
    reader = sitk.ImageSeriesReader()
    names = (
        reader.GetGDCMSeriesFileNames(str(folder), series_uid)
        if series_uid
        else reader.GetGDCMSeriesFileNames(str(folder))
    )
    reader.SetFileNames(names)
    return reader.Execute(), list(names)


def assert_same_values(a: np.ndarray, b: np.ndarray) -> None:
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(b.dtype, np.floating):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.abs(b).max() or 1))
    else:
        np.testing.assert_array_equal(a.astype(np.int64), b.astype(np.int64))


def sample_indices(shape: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return np.vstack([corners, np.column_stack([rng.integers(0, s, n) for s in shape])])


@pytest.mark.parametrize("rel", REAL_SERIES)
def test_dicom_matches_simpleitk_world_positions_and_values(shared: Path, rel: str) -> None:
    folder = shared / rel
    vol = read_image(folder)
    image, names = sitk_series(folder, vol.meta.series_instance_uid)
    ref = Volume.from_sitk(image)
    assert vol.shape == ref.shape
    assert [p.name for p in vol.meta.source_files] == [Path(n).name for n in names]
    idx = sample_indices(vol.shape, 200, seed=len(rel))
    ours = vol.geometry.index_to_world(idx)
    theirs = np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk)) for ijk in idx])
    assert np.max(np.linalg.norm(ours - theirs, axis=1)) < TOL_MM
    assert_same_values(vol.array, ref.array)
    assert vol.meta.source_format == "dicom" and vol.meta.modality in ("CT", "MR")


def test_chaos_dicom_equals_its_nifti_voxel_for_voxel(shared: Path) -> None:
    folder = shared / "ct/chaos_ct_sample/dicom"
    vol = read_image(folder)
    nii = read_nifti(shared / "ct/chaos_ct_sample/image.nii.gz")
    assert vol.geometry.same_grid(nii.geometry, TOL_MM)
    np.testing.assert_array_equal(vol.array.astype(np.int32), nii.array.astype(np.int32))
    names = [p.name for p in vol.meta.source_files]
    assert names == sorted(names, reverse=True), "chaos z decreases with file name, so k=0 is the last file"
    z = [vol.geometry.index_to_world([[0, 0, k]])[0, 2] for k in (0, vol.shape[2] - 1)]
    assert z[0] < z[1]


@pytest.mark.parametrize(
    "rel",
    ["dicom/dicom2nifti/generic/anatomical", "dicom/dicom2nifti/failing/slicecount"],
)
def test_dicom_matches_dicom2nifti_ground_truth_in_world_space(shared: Path, rel: str) -> None:
    vol = read_image(shared / rel / "001")
    assert_world_equal(vol, shared / rel / "001_ground_truth.nii.gz")


def test_philips_enhanced_matches_dicom2nifti(shared: Path) -> None:
    rel = shared / "dicom/dicom2nifti/philips_enhanced/anatomical"
    vol = read_image(next((rel / "001").iterdir()))
    assert vol.shape[2] == 8 and vol.meta.extra["n_frames_per_file"] == 8
    assert_world_equal(vol, rel / "001_ground_truth.nii.gz", rtol=1e-5)


def assert_world_equal(vol: Volume, nifti: Path, rtol: float = 0.0) -> None:
    """Each of our voxels, mapped through world space into the reference NIfTI (RAS affine), has the same value."""
    img = nib.load(str(nifti))
    data = np.asanyarray(img.dataobj).reshape(img.shape[:3])
    ijk = np.indices(vol.shape).reshape(3, -1).T
    world_ras = vol.geometry.index_to_world(ijk) * np.array([-1.0, -1.0, 1.0])
    ref_idx = (np.c_[world_ras, np.ones(len(world_ras))] @ np.linalg.inv(img.affine).T)[:, :3]
    assert np.max(np.abs(ref_idx - np.round(ref_idx))) < 1e-3, "grids do not coincide"
    r = np.round(ref_idx).astype(int)
    assert (r >= 0).all() and (r < np.array(data.shape)).all()
    np.testing.assert_allclose(vol.array[tuple(ijk.T)], data[tuple(r.T)], rtol=rtol)


@pytest.mark.parametrize("rel", ["ct/chaos_ct_sample/dicom", "dicom/mr_series_penn_prisma_phantom"])
def test_nifti_written_from_dicom_reads_back_on_the_same_grid(shared: Path, tmp_path: Path, rel: str) -> None:
    vol = read_image(shared / rel)
    out = write_nifti(vol, tmp_path / "out.nii.gz")
    back = read_nifti(out)
    assert back.geometry.same_grid(vol.geometry, TOL_MM)
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    img = nib.load(str(out))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.affine, vol.geometry.affine_ras, atol=1e-4)
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), vol.array)


@pytest.mark.parametrize(
    "rel",
    [
        "ct/chaos_ct_sample/image.nii.gz",
        "ct/chaos_ct_sample/liver.nii.gz",
        "ct/totalseg_example_ct_sm/image.nii.gz",
        "ct/totalseg_example_ct_sm/labels.nii.gz",
        "dicom/ct_series_totalsegmentator_refseg/example_seg_dicom.nii.gz",
        "dicom/dicom2nifti/generic/anatomical/001_ground_truth.nii.gz",
        "dicom/dicom2nifti/philips_enhanced/anatomical/001_ground_truth.nii.gz",
    ],
)
def test_read_nifti_places_voxels_as_nibabel_does(shared: Path, rel: str) -> None:
    path = shared / rel
    vol = read_nifti(path)
    img = nib.load(str(path))
    np.testing.assert_allclose(vol.geometry.affine_ras, img.affine, atol=1e-4)
    np.testing.assert_allclose(vol.array, np.asanyarray(img.dataobj).reshape(vol.shape), rtol=1e-6)
    assert vol.meta.source_format == "nifti"


def test_nifti_with_disagreeing_qform_and_sform_follows_the_sform(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    sform = np.diag([2.0, 3.0, 4.0, 1.0])
    sform[:3, 3] = [10, 20, 30]
    qform = np.diag([-1.0, 1.0, 1.0, 1.0])
    img = nib.Nifti1Image(data, sform)
    img.set_sform(sform, code=2)
    img.set_qform(qform, code=1)
    path = tmp_path / "q_s.nii.gz"
    nib.save(img, str(path))
    vol = read_nifti(path)
    np.testing.assert_allclose(vol.geometry.affine_ras, nib.load(str(path)).affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array, data)


def test_write_nifti_is_atomic_and_refuses_to_overwrite(shared: Path, tmp_path: Path) -> None:
    from medseg.errors import UsageError

    vol = read_nifti(shared / "ct/totalseg_example_ct_sm/liver.nii.gz")
    out = write_nifti(vol, tmp_path / "a.nii.gz")
    before = out.read_bytes()
    with pytest.raises(UsageError):
        write_nifti(vol.with_array(vol.array * 0), out)
    assert out.read_bytes() == before
    write_nifti(vol.with_array(vol.array * 0), out, overwrite=True)
    assert read_nifti(out).array.max() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]
