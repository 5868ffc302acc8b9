"""Load-time benchmark: medseg `read_image` vs SimpleITK ImageSeriesReader (header scan + decode) on the same series.

Series: (a) the shared TotalSegmentator JPEG 2000 CT (20 x 512^2, empty UIDs), (b) chaos_ct_sample/dicom
(78 x 512^2, uncompressed), (c) a generated 300 x 512^2 uncompressed CT written to a temp folder from the chaos
headers with valid, regular geometry. Runs are interleaved after a warm-up (page cache warm for both), the median of
`--repeats` is reported, and the two readers' voxels are checked to be equal.

    .venv/bin/python bench/bench_load.py [--repeats 5] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medseg.io import read_image
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


def time_once(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench(name: str, folder: Path, repeats: int) -> tuple[str, int, float, float]:
    ours, ref = read_image(folder), Volume.from_sitk(load_sitk(folder))
    if not (ours.geometry.same_grid(ref.geometry, 1e-3) and np.array_equal(ours.array, ref.array)):
        raise SystemExit(f"{name}: medseg and SimpleITK disagree")
    t_ours, t_sitk = [], []
    for _ in range(repeats):
        t_ours.append(time_once(read_image, folder))
        t_sitk.append(time_once(load_sitk, folder))
    return name, ours.shape[2], statistics.median(t_ours), statistics.median(t_sitk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    rows = [
        bench("TotalSegmentator JPEG 2000", args.shared / "dicom/ct_series_totalsegmentator", args.repeats),
        bench("chaos_ct_sample uncompressed", args.shared / "ct/chaos_ct_sample/dicom", args.repeats),
    ]
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        folder = generate_series(args.shared / "ct/chaos_ct_sample/dicom", Path(tmp))
        rows.append(bench("generated 512x512x300 uncompressed", folder, args.repeats))
    print(f"{'series':<38}{'slices':>7}{'medseg s':>10}{'SimpleITK s':>13}{'ratio':>8}")
    for name, n, ours, ref in rows:
        print(f"{name:<38}{n:>7}{ours:>10.3f}{ref:>13.3f}{ours / ref:>8.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
