"""GPU check (#19, #12): `medseg infer --device cuda` against `--device cpu` on the 512x512x300 CT series of
bench_infer (same torch backend; outputs compared voxel by voxel), and `medseg train --device cuda` speed.

The GPU machine has no ../shared/data, so first make a compact kit here (about 20 MB: the CHAOS DICOM series as
tar.xz, 12 label maps, two small real CTs, a manifest with the shared data's own SHA-256 digests and a training
config that is the stage-5 recipe with only the manifest and the time budget changed):

    .venv/bin/python bench/bench_gpu.py kit gpukit
    # on the GPU machine, from the repository root:
    python bench/bench_gpu.py run --kit gpukit --out result.json [--slices 300] [--repeat 3] [--train-s 90]

The lite kit (`kit --lite`, 6.7 MB: every second CHAOS slice, no training data) fits beside the repository and the
Python 3.12 wheels the GPU image lacks within the 64 MiB that travel; `bench/gpu_check.sh` runs the whole check with
it (the wheels and what it measures are listed there). The 300-slice series then repeats 39 slices instead of 78.
The training kit (`kit --train`, 7.1 MB: the label maps, the two small real CTs, manifest and config, no CHAOS) is
what `bench/gpu_train_check.sh` needs to time `medseg train`'s loop there (`bench/bench_train.py loop`).

Measured: (a) `medseg infer SERIES --organ liver,spleen --backend torch` on cuda and on cpu (the device's CPU,
--threads as given), one cold and `repeat` warm runs each, wall time and peak RSS of the process tree; (b) per-organ
Dice and volume between the cuda and the cpu label maps, and whether the SEG pixel data are byte-identical;
(c) `medseg train` on the kit (stage-5 recipe) with --device cuda and, for the ratio, --device cpu limited to 2
threads: iterations per second each, from the run's own summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs/abdomen_stage5.yaml"
MANIFEST = REPO / "data_manifests/abdomen_v4.json"
PER_GROUP = 3  # label maps per source group in the kit's training split


def pack_chaos(kit: Path, shared: Path, step: int = 1) -> int:
    """The CHAOS DICOM series as `kit/chaos_dicom.tar.xz`, every `step`-th slice in z order; the number packed."""
    import pydicom

    src = shared / "ct/chaos_ct_sample/dicom"

    def z(f: Path) -> float:
        return float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])

    files = sorted(src.iterdir(), key=z)
    kit.mkdir(parents=True, exist_ok=True)
    with tarfile.open(kit / "chaos_dicom.tar.xz", "w:xz") as tar:
        for f in files[::step]:
            tar.add(f, arcname=f"ct/chaos_ct_sample/dicom/{f.name}")
    return len(files[::step])


def make_kit(kit: Path, lite: bool = False, train_only: bool = False) -> None:
    """Copy the compact subset of ../shared/data into `kit` with a manifest (same digests) and a training config;
    `lite`: only every second slice of the CHAOS series, for the inference check alone; `train_only`: no CHAOS."""
    import yaml

    from medseg.digests import default_data_root

    shared = default_data_root()
    if lite:
        print(f"kit {kit}: {pack_chaos(kit, shared, step=2)} CHAOS slices, no training data")
        return
    manifest = json.loads(MANIFEST.read_text())
    keep, per_group = [], {}
    for e in manifest["entries"]:
        if e["kind"] == "label_map":
            group = Path(e["label"]).parent.name
            if e["split"] == "val" or per_group.get(group, 0) < PER_GROUP:
                keep.append(e)
                per_group[group] = per_group.get(group, 0) + (e["split"] == "train")
        elif e["case_id"] in ("totalseg_dicom_20sl", "totalseg_example_ct_sm"):
            keep.append(e)
    data = kit / "data"
    for e in keep:
        for role in e["sha256"]:
            src = shared / e[role]
            dst = data / e[role]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                shutil.copyfile(src, dst)
    subset = manifest | {"name": "abdomen_v4_gpu_subset", "entries": keep,
                         "description": f"GPU speed check: a subset of abdomen_v4 ({len(keep)} entries)"}  # fmt: skip
    (kit / "abdomen_gpu.json").write_text(json.dumps(subset, indent=1))
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg["data"]["manifest"] = "abdomen_gpu.json"
    (kit / "train_gpu.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if not train_only:
        pack_chaos(kit, shared)
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    print(f"kit {kit}: {len(keep)} manifest entries, {size / 1e6:.1f} MB")


class PeakRSS:
    """Peak resident memory of a process and its children, sampled every 20 ms (psutil): bench_infer's
    `/usr/bin/time -v` is not on every GPU machine image."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def run(cmd: list[str], env: dict[str, str]) -> dict[str, float | int | str]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rss = PeakRSS(proc.pid)
    out, _ = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode:
        print(" ".join(cmd), "\n", out[-3000:], file=sys.stderr)
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(rss.stop()), "exit": proc.returncode, "tail": out[-300:]}


def infer_runs(series: Path, tmp: Path, device: str, repeat: int, env: dict[str, str]) -> dict:
    """One cold and `repeat` warm `medseg infer` runs on `device`; the last run's folder is kept for parity."""
    runs = []
    for k in range(repeat + 1):
        out = tmp / f"out-{device}"
        cmd = [sys.executable, "-m", "medseg", "--quiet", "infer", str(series), "--organ", "liver,spleen",
               "--backend", "torch", "--device", device, "--out", str(out), "--overwrite"]  # fmt: skip
        runs.append(run(cmd, env))
        print(device, "cold" if k == 0 else "warm", runs[-1]["wall_s"], "s", runs[-1]["peak_rss_mb"], "MB", flush=True)
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    warm = sorted(r["wall_s"] for r in runs[1:])
    return {"cold_s": runs[0]["wall_s"], "warm_s": [r["wall_s"] for r in runs[1:]],
            "warm_median_s": warm[len(warm) // 2] if warm else float("nan"),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "exit": [r["exit"] for r in runs],
            "stages_s": summary["timings_s"], "folder": str(next(out.glob("*/summary.json")).parent)}  # fmt: skip


def compare(cpu: Path, gpu: Path) -> dict:
    """Per-organ Dice (`organ_dice`, the training loop's) and voxel counts between two `medseg infer` folders; SEG
    pixel data byte-identical or not."""
    import nibabel as nib
    import pydicom

    from medseg.train.loop import organ_dice

    a = np.asarray(nib.load(cpu / "labels.nii.gz").dataobj)
    b = np.asarray(nib.load(gpu / "labels.nii.gz").dataobj)
    sa, sb = (json.loads((f / "summary.json").read_text())["organs"] for f in (cpu, gpu))
    names = tuple(o["name"] for o in sorted(sa, key=lambda o: o["label"]))
    dice = organ_dice(b, a, names)
    organs = {n: {"dice": round(dice.get(n, float("nan")), 6), "voxels_cpu": int((a == v).sum()),
                  "voxels_cuda": int((b == v).sum())} for v, n in enumerate(names, start=1)}  # fmt: skip
    seg_a, seg_b = (pydicom.dcmread(f / "seg.dcm") for f in (cpu, gpu))
    return {"labels_identical": bool((a == b).all()), "voxel_agreement": float((a == b).mean()), "organs": organs,
            "summary_organs": {"cpu": sa, "cuda": sb},
            "seg_pixels_identical": seg_a.PixelData == seg_b.PixelData,
            "seg_frames": [int(seg_a.NumberOfFrames), int(seg_b.NumberOfFrames)]}  # fmt: skip


def train_speed(kit: Path, tmp: Path, device: str, seconds: float, env: dict[str, str]) -> dict:
    """`medseg train` on the kit for `seconds` (time budget); iterations per second from its summary.json."""
    import yaml

    cfg = yaml.safe_load((kit / "train_gpu.yaml").read_text())
    cfg["run"]["time_budget_min"] = seconds / 60
    cfg["run"]["val_every"] = 10**6 if device == "cpu" else cfg["run"]["val_every"]
    config = kit / f"train_{device}.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp / f"train-{device}"
    cmd = [sys.executable, "-m", "medseg", "--quiet", "train", str(config), "--out", str(out), "--device", device,
           "--data-root", str(kit / "data")]  # fmt: skip
    r = run(cmd, env)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    it, el = summary.get("iterations", 0), summary.get("elapsed_s", float("nan"))
    print(f"train {device}: {it} iterations in {el:.0f} s", flush=True)
    return {"iterations": it, "elapsed_s": el, "it_per_s": it / el if el == el and el else 0.0, "exit": r["exit"],
            "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "summary": summary}  # fmt: skip


def run_all(args: argparse.Namespace) -> dict:
    import torch

    kit = args.kit.resolve()
    if not (kit / "data/ct/chaos_ct_sample/dicom").exists():
        with tarfile.open(kit / "chaos_dicom.tar.xz") as tar:
            tar.extractall(kit / "data", filter="data")
    os.environ["MEDSEG_DATA_ROOT"] = str(kit / "data")  # before bench_infer reads it at import
    from bench_infer import make_series

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    result: dict = {"gpu": gpu, "torch": torch.__version__, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        series = tmp / "series"
        make_series(series, args.slices)
        result["infer"] = {d: infer_runs(series, tmp, d, args.repeat, env) for d in args.devices.split(",")}
        if {"cpu", "cuda"} <= result["infer"].keys():
            result["parity"] = compare(Path(result["infer"]["cpu"]["folder"]), Path(result["infer"]["cuda"]["folder"]))
            print(json.dumps(result["parity"], indent=1), flush=True)
        if args.train_s:
            result["train"] = {args.train_device: train_speed(kit, tmp, args.train_device, args.train_s, env)}
            if args.cpu_train_s:
                cpu_env = env | {"OMP_NUM_THREADS": "2"}
                result["train"]["cpu2"] = train_speed(kit, tmp, "cpu", args.cpu_train_s, cpu_env)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kit", help="make the compact kit from ../shared/data")
    k.add_argument("kit", type=Path)
    k.add_argument("--lite", action="store_true", help="every second CHAOS slice, no training data (inference only)")
    k.add_argument("--train", action="store_true", help="the training data only, no CHAOS (training speed only)")
    r = sub.add_parser("run", help="run the checks (needs a CUDA device)")
    r.add_argument("--kit", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--slices", type=int, default=300)
    r.add_argument("--devices", default="cuda,cpu", help="medseg infer --device values to run (parity: both)")
    r.add_argument("--train-device", default="cuda")
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--train-s", type=float, default=90.0, help="cuda training time budget (0: skip training)")
    r.add_argument("--cpu-train-s", type=float, default=60.0, help="cpu (2 threads) training, for the ratio")
    args = parser.parse_args()
    if args.cmd == "kit":
        make_kit(args.kit, args.lite, args.train)
        return
    result = run_all(args)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    inf, par = result["infer"], result.get("parity")
    if par:
        cuda, cpu = inf["cuda"]["warm_median_s"], inf["cpu"]["warm_median_s"]
        print(
            f"infer warm median: cuda {cuda:.2f} s, cpu {cpu:.2f} s ({cpu / cuda:.2f}x); labels identical "
            f"{par['labels_identical']}, SEG pixels identical {par['seg_pixels_identical']}"
        )
    for device, t in result.get("train", {}).items():
        print(f"train {device}: {t['it_per_s']:.3f} it/s")


if __name__ == "__main__":
    main()
