"""Load-time benchmark: medseg `read_image` vs SimpleITK ImageSeriesReader (header scan + decode) on the same series.

Series: (a) the shared TotalSegmentator JPEG 2000 CT (20 x 512^2, empty UIDs), (b) chaos_ct_sample/dicom
(78 x 512^2, uncompressed), (c) a generated 300 x 512^2 uncompressed CT written to a temp folder from the chaos
headers with valid, regular geometry; and (d) reading chaos image.nii.gz vs sitk.ReadImage (medseg also verifies
the gzip CRC, which SimpleITK does not). Runs are interleaved after a warm-up (page cache warm for both), the median of
`--repeats` is reported, and the two readers' voxels are checked to be equal.

    .venv/bin/python bench/bench_load.py [--repeats 5] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medseg.io import read_image, read_nifti
from medseg.io.volume import Volume

REPO = Path(__file__).resolve().parents[1]


def load_sitk(folder: Path) -> sitk.Image:
    """SimpleITK's usual way to read a DICOM series: GDCM scans the folder, then the series is read."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def generate_series(template_dir: Path, out: Path, n_slices: int = 300) -> Path:
    """Write `n_slices` uncompressed CT slices reusing the real chaos headers and pixels, 2 mm apart along z."""
    templates = [pydicom.dcmread(p) for p in sorted(template_dir.iterdir())]
    series_uid = generate_uid()
    first = np.array([float(v) for v in templates[0].ImagePositionPatient])
    for k in range(n_slices):
        ds = templates[k % len(templates)]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{first[0]:.6f}", f"{first[1]:.6f}", f"{first[2] - 2.0 * k:.6f}"]
        ds.SliceLocation = f"{first[2] - 2.0 * k:.6f}"
        ds.save_as(out / f"IM{k:05d}.dcm")
    return out


def time_once(fn: Callable[[Path], object], path: Path) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one call (CPU time is less disturbed by other load on a shared machine)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(path)
    return time.perf_counter() - w0, time.process_time() - c0


def bench(
    name: str, path: Path, repeats: int, ours_fn: Callable[[Path], Volume], ref_fn: Callable[[Path], sitk.Image]
) -> Row:
    ours, ref = ours_fn(path), Volume.from_sitk(ref_fn(path))
    if not (ours.geometry.same_grid(ref.geometry, 1e-3) and np.array_equal(ours.array, ref.array)):
        raise SystemExit(f"{name}: medseg and SimpleITK disagree")
    t_ours, t_sitk = [], []
    for _ in range(repeats):
        t_ours.append(time_once(ours_fn, path))
        t_sitk.append(time_once(ref_fn, path))
    med = [statistics.median(t[i] for t in ts) for ts in (t_ours, t_sitk) for i in (0, 1)]
    return Row(name, ours.shape[2], med[0], med[2], med[1], med[3])


@dataclass(frozen=True)
class Row:
    name: str
    slices: int
    ours_wall: float
    sitk_wall: float
    ours_cpu: float
    sitk_cpu: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    dicom = (args.repeats, read_image, load_sitk)
    rows = [
        bench("TotalSegmentator JPEG 2000", args.shared / "dicom/ct_series_totalsegmentator", *dicom),
        bench("chaos_ct_sample uncompressed", args.shared / "ct/chaos_ct_sample/dicom", *dicom),
    ]
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        folder = generate_series(args.shared / "ct/chaos_ct_sample/dicom", Path(tmp))
        rows.append(bench("generated 512x512x300 uncompressed", folder, *dicom))
    nifti = args.shared / "ct/chaos_ct_sample/image.nii.gz"
    rows.append(bench("chaos image.nii.gz (read_nifti)", nifti, args.repeats, read_nifti, sitk.ReadImage))
    print(f"{'input':<36}{'slices':>7}{'medseg s':>10}{'SimpleITK s':>12}{'ratio':>7}{'CPU ratio':>11}")
    for r in rows:
        print(
            f"{r.name:<36}{r.slices:>7}{r.ours_wall:>10.3f}{r.sitk_wall:>12.3f}"
            f"{r.ours_wall / r.sitk_wall:>7.2f}{r.ours_cpu / r.sitk_cpu:>11.2f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
