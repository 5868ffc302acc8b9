"""The CPU-side parts of `bench/bench_gpu.py` (its GPU runs need a lent machine): the kit it carries there holds
verified training data and the stage-5 recipe unchanged but for the manifest, and its cpu-vs-cuda comparison tells
identical outputs from different ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_infer  # noqa: E402
from bench_gpu import compare, make_kit  # noqa: E402

from medseg.train.config import load_config  # noqa: E402
from medseg.train.manifest import load_manifest, verify_manifest  # noqa: E402


@pytest.mark.slow
def test_kit_holds_verified_data_and_the_stage_5_recipe(shared: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(shared))
    kit = tmp_path / "kit"
    make_kit(kit)
    manifest, _ = load_manifest(kit / "abdomen_gpu.json")
    verify_manifest(manifest, kit / "data")  # the shared data's own digests, on the copies
    splits = {e.split for e in manifest.entries}
    kinds = {e.kind for e in manifest.entries}
    assert splits == {"train", "val"} and kinds == {"label_map", "ct_pair"}
    cfg, _ = load_config(kit / "train_gpu.yaml")
    stage5, _ = load_config(REPO / "configs/abdomen_stage5.yaml")
    assert cfg.model_copy(update={"data": stage5.data}) == stage5
    assert cfg.data.model_copy(update={"manifest": stage5.data.manifest}) == stage5.data
    with tarfile.open(kit / "chaos_dicom.tar.xz") as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    assert len(names) == len(list((shared / "ct/chaos_ct_sample/dicom").iterdir()))


def test_lite_kit_holds_every_second_chaos_slice_in_z_order(shared: Path, tmp_path: Path, monkeypatch) -> None:
    import pydicom

    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(shared))
    make_kit(tmp_path / "kit", lite=True)
    assert sorted(p.name for p in (tmp_path / "kit").iterdir()) == ["chaos_dicom.tar.xz"]
    with tarfile.open(tmp_path / "kit/chaos_dicom.tar.xz") as tar:
        tar.extractall(tmp_path / "data", filter="data")

    def positions(folder: Path) -> list[float]:
        headers = (pydicom.dcmread(f, stop_before_pixels=True) for f in folder.iterdir())
        return sorted(float(ds.ImagePositionPatient[2]) for ds in headers)

    rel = "ct/chaos_ct_sample/dicom"
    assert positions(tmp_path / "data" / rel) == positions(shared / rel)[::2]


@pytest.mark.slow
def test_compare_tells_identical_outputs_from_different_ones(shared: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bench_infer, "SHARED", shared)
    series = tmp_path / "series"
    bench_infer.make_series(series, 40)  # the bench's own series (chaos CT, fresh UIDs), short
    out = tmp_path / "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "medseg", "--quiet", "infer", str(series), "--organ", "liver,spleen", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, MEDSEG_CACHE_DIR=str(tmp_path / "cache")),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = next(out.iterdir())
    same = compare(folder, folder)
    assert same["labels_identical"] and same["seg_pixels_identical"] and same["voxel_agreement"] == 1.0
    assert same["organs"]["liver"]["dice"] == 1.0 and same["organs"]["liver"]["voxels_cpu"] > 0
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    img = nib.load(other / "labels.nii.gz")
    labels = np.asarray(img.dataobj).copy()
    liver = np.argwhere(labels == 1)
    labels[tuple(liver[: len(liver) // 2].T)] = 0
    nib.save(nib.Nifti1Image(labels, img.affine, img.header), other / "labels.nii.gz")
    diff = compare(folder, other)
    assert not diff["labels_identical"] and diff["voxel_agreement"] < 1.0
    assert 0.5 < diff["organs"]["liver"]["dice"] < 0.8
