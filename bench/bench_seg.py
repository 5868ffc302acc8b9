"""Benchmark the DICOM SEG writer against an earlier revision of it, in the same process on the same inputs.

Run: `.venv/bin/python bench/bench_seg.py [--ref 3474446] [--slices 234] [--repeats 5]`

The series is bench_infer's 512x512xN CT tiled from the real chaos CT (fresh UIDs), the label map its manual liver
label tiled the same way. `--ref` is a git revision of this repository whose `medseg/writers/seg.py` is loaded as
the reference (default: the last one before the fast path, which re-read and normalised every source header and
transposed the whole label map at once). Both writers run alternately after one warm-up each; the medians are
compared, and the two SEGs' pixel data must be byte-identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from bench_infer import SHARED, make_series

from medseg.io import read_image, read_nifti
from medseg.writers import seg as current

REPO = Path(__file__).resolve().parents[1]
BEFORE_FAST_PATH = "3474446"


def load_reference(rev: str, folder: Path) -> ModuleType:
    """`medseg/writers/seg.py` as it was at `rev`, imported as a module of its own."""
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:medseg/writers/seg.py"], check=True,
                          capture_output=True, text=True).stdout  # fmt: skip
    path = folder / "seg_reference.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("seg_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["seg_reference"] = module
    spec.loader.exec_module(module)
    module.CODES_FILE = current.CODES_FILE
    return module


def tiled_liver(shape: tuple[int, int, int]) -> np.ndarray:
    """The chaos manual liver label tiled along k like `make_series` tiles the slices (forward, mirrored, ...)."""
    liver = read_nifti(SHARED / "ct/chaos_ct_sample/liver.nii.gz").array.astype(np.uint8)
    cycle = list(range(liver.shape[2])) + list(range(liver.shape[2]))[::-1]
    labels = np.zeros(shape, dtype=np.uint8)
    for k in range(shape[2]):
        labels[:, :, k] = liver[:, :, cycle[k % len(cycle)]]
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default=BEFORE_FAST_PATH, help="git revision of the reference writer")
    parser.add_argument("--slices", type=int, default=234)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medseg-bench-seg-") as tmp:
        tmp_path = Path(tmp)
        reference = load_reference(args.ref, tmp_path)
        make_series(tmp_path / "series", args.slices)
        volume = read_image(tmp_path / "series")
        labels = tiled_liver(volume.shape)
        times: dict[str, list[float]] = {"reference": [], "current": []}
        writers = {"reference": reference, "current": current}
        for rep in range(args.repeats + 1):
            for name, module in writers.items():
                algorithm = module.SegAlgorithm("liver", "1.0.0", "medseg bench")
                t = time.perf_counter()
                module.write_seg(labels, volume, {1: "liver"}, algorithm, tmp_path / f"{name}.dcm", overwrite=True)
                if rep:  # the first round is the warm-up (highdicom's tables, caches)
                    times[name].append(time.perf_counter() - t)
        import pydicom

        ref_ds, cur_ds = (pydicom.dcmread(tmp_path / f"{name}.dcm") for name in writers)
        same = ref_ds.PixelData == cur_ds.PixelData and ref_ds.NumberOfFrames == cur_ds.NumberOfFrames
        ref_s, cur_s = (float(np.median(times[name])) for name in writers)
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"\nSEG writer, 512x512x{args.slices} CT, {int(ref_ds.NumberOfFrames)} frames with liver, "
              f"{os.cpu_count()} CPU(s), load {load}")  # fmt: skip
        print(f"reference ({args.ref}): median {ref_s:.3f} s  {[round(t, 3) for t in times['reference']]}")
        print(f"current:            median {cur_s:.3f} s  {[round(t, 3) for t in times['current']]}")
        print(f"ratio {ref_s / cur_s:.2f}x (goal >= 3x); pixel data byte-identical: {same}")


if __name__ == "__main__":
    main()
