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
