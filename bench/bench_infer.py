"""Benchmark `medseg infer`: end to end on a generated 512x512x~234 abdominal CT DICOM series, and the inference core.

Run: `.venv/bin/python bench/bench_infer.py [--model NAME_OR_FOLDER] [--slices 234] [--batch 20 [--batch-only]]`

The series is built from the real chaos CT (78 slices at 2 mm) tiled along z (forward, mirrored, forward) with
valid, consistent geometry and fresh UIDs, written uncompressed to a temporary folder. Measured:
  (a) `medseg infer` as a subprocess (DICOM in, SEG out): wall time and peak RSS from /usr/bin/time -v, with a
      cold OpenVINO cache (first use of a model: includes the one-off export) and warm (every later run);
  (b) plain MONAI `sliding_window_inference` (gaussian, overlap 0.25, sw_batch_size 1, eager torch) on the
      preprocessed tensor at model spacing;
  (c) medseg's inference core on the same tensor (OpenVINO, fixed-shape batch, constant windows cached);
  with --batch N: `medseg infer` over a folder of N studies of 512x512x150 (one model, the next study read and
  preprocessed while the current one runs the network), f32 and INT8: studies per minute.
Without --model, the installed liver model is used, or else an untrained network of the default architecture
(the timing depends on the architecture, not on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medseg.digests import default_data_root

REPO = Path(__file__).resolve().parents[1]
SHARED = default_data_root()
GOAL_SLICES = 300  # #12 and #19 state their goals for a 512x512x300 series


def make_series(dst: Path, n_slices: int) -> None:
    """Write an n-slice 512x512 CT series tiled from the chaos sample, z increasing by 2 mm per slice."""
    import pydicom
    from pydicom.uid import generate_uid

    src = sorted((SHARED / "ct/chaos_ct_sample/dicom").iterdir())
    datasets = [pydicom.dcmread(f) for f in src]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    cycle = datasets + datasets[::-1]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    z0 = float(datasets[0].ImagePositionPatient[2])
    dst.mkdir(parents=True, exist_ok=True)
    for k in range(n_slices):
        ds = cycle[k % len(cycle)].copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.4f}", f"{y:.4f}", f"{z0 + 2.0 * k:.4f}"]
        ds.SliceLocation = f"{z0 + 2.0 * k:.4f}"
        ds.save_as(dst / f"ct{k:04d}.dcm")


def default_model(folder: Path) -> Path:
    """An untrained model of the default architecture (3 mm, 96^3, UNet 16..256), for timing only."""
    sys.path.insert(0, str(REPO / "tests"))
    from infer_fixtures import make_model_folder

    return make_model_folder(folder, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))


def run_cli(
    series: Path, model: str, out: Path, cache: Path, extra: list[str] | None = None
) -> tuple[float, float, int]:
    """`medseg infer` under /usr/bin/time -v: (wall s, peak RSS MB, exit code)."""
    medseg = str(Path(sys.executable).parent / "medseg")
    cmd = ["/usr/bin/time", "-v", medseg, "--quiet", "infer", str(series), "--model", model, "--out", str(out)]
    cmd += extra or []
    env = dict(os.environ, MEDSEG_CACHE_DIR=str(cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed software runs: with cached bytecode after the first run
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode not in (0,):
        print(proc.stderr[-2000:], file=sys.stderr)
    return wall, (int(rss.group(1)) / 1024 if rss else float("nan")), proc.returncode


def core_benchmark(series: Path, model_ref: str, cache: Path) -> dict[str, float]:
    """(b) plain MONAI sliding window, batch 1, eager vs (c) medseg's core, on the same preprocessed tensor."""
    import torch
    from monai.inferers import sliding_window_inference

    from medseg.infer.runtime import load_runner, parity
    from medseg.infer.sliding import WindowStats, sliding_window
    from medseg.io import read_image
    from medseg.models.registry import resolve_model
    from medseg.preprocess import model_grid, resample_to_grid, window

    os.environ["MEDSEG_CACHE_DIR"] = str(cache)
    model = resolve_model(model_ref, "liver")
    card = model.card
    volume = read_image(series)
    grid = model_grid(volume.geometry, card.spacing)
    image = window(resample_to_grid(volume.array, volume.geometry, grid), card.intensity.a_min, card.intensity.a_max)
    net = model.load_network("cpu")
    roi = tuple(card.roi_size)
    x = torch.from_numpy(image)[None, None]
    with torch.inference_mode():
        net(torch.zeros(1, 1, *roi))
        t = time.perf_counter()
        ref = sliding_window_inference(x, roi, 1, net, overlap=0.25, mode="gaussian")[0].numpy()
        t_monai = time.perf_counter() - t
    runner = load_runner(model, "openvino")
    runner(np.zeros((runner.batch_size, 1, *roi), dtype=np.float32))
    stats = WindowStats()
    t = time.perf_counter()
    ours = sliding_window(image, runner, roi, card.network.out_channels, runner.batch_size, 0.25, True, stats)
    t_ours = time.perf_counter() - t
    onnx = load_runner(model, "onnxruntime")
    onnx(np.zeros((onnx.batch_size, 1, *roi), dtype=np.float32))
    t = time.perf_counter()
    sliding_window(image, onnx, roi, card.network.out_channels, onnx.batch_size, 0.25, True)
    t_onnx = time.perf_counter() - t
    eager4 = load_runner(model, "torch", batch_size=4)
    t = time.perf_counter()
    sliding_window(image, eager4, roi, card.network.out_channels, 4, 0.25, True)
    t_eager4 = time.perf_counter() - t
    p = parity(ref[None], ours[None])
    int8: dict[str, float] = {}
    if card.int8 is not None:
        q = load_runner(model, precision="int8")
        q(np.zeros((1, 1, *roi), dtype=np.float32))
        t = time.perf_counter()
        q_out = sliding_window(image, q, roi, card.network.out_channels, 1, 0.25, True)
        int8 = {"int8_s": time.perf_counter() - t}
        int8 |= {f"int8_{k}": v for k, v in parity(ref[None], q_out[None]).items()}
    return int8 | {
        "shape": grid.shape,
        "windows": stats.planned,
        "monai_b1_s": t_monai,
        "ours_s": t_ours,
        "eager_b4_s": t_eager4,
        "onnx_s": t_onnx,
        "ratio": t_monai / t_ours,
        "max_abs_diff": p["max_abs_diff"],
        "argmax_agreement": p["argmax_agreement"],
    }


def batch_benchmark(tmp: Path, model: str, cache: Path, studies: int, slices: int, int8: bool) -> list[str]:
    """`medseg infer` over a folder of `studies` studies (512x512x`slices`, fresh UIDs each): studies per minute."""
    root = tmp / "batch"
    for n in range(studies):
        make_series(root / f"study{n:02d}", slices)
    lines = []
    for precision in ("f32", "int8") if int8 else ("f32",):
        warm = ["--precision", precision]
        run_cli(root / "study00", model, tmp / f"batch-warm-{precision}", cache, warm)  # export cached before timing
        out = tmp / f"batch-{precision}"
        wall, rss, code = run_cli(root, model, out, cache, ["--precision", precision])
        summaries = [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))]
        ok = sum(s["status"] in ("ok", "flagged") for s in summaries)
        stages: dict[str, float] = {}
        for s in summaries:
            for k, v in s["timings_s"].items():
                stages[k] = stages.get(k, 0.0) + v / max(len(summaries), 1)
        lines.append(
            f"batch {precision}: {studies} studies of 512x512x{slices} in {wall:.1f} s wall = "
            f"{60 * studies / wall:.1f} studies/min ({ok} segmented, exit {code}, peak RSS {rss:.0f} MB); "
            "mean s per case: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or folder (default: the default liver model)")
    parser.add_argument("--slices", type=int, default=234)
    parser.add_argument("--batch", type=int, default=0, help="also time a folder of this many studies (20)")
    parser.add_argument("--batch-slices", type=int, default=150)
    parser.add_argument("--batch-only", action="store_true", help="only the batch part")
    parser.add_argument("--organ", default=None, help="--organ for medseg infer (default: the CLI's, liver)")
    parser.add_argument("--repeat", type=int, default=3, help="warm runs; the median is reported (this VM is noisy)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        tmp_path = Path(tmp)
        from medseg.models.registry import DEFAULT_MODELS, ZOO

        default = ZOO / DEFAULT_MODELS["liver"]
        model = args.model or (
            str(default) if (default / "model_card.yaml").is_file() else str(default_model(tmp_path / "m"))
        )
        series = tmp_path / "series"
        cache = tmp_path / "cache"
        if args.batch:
            from medseg.models.registry import resolve_model

            int8 = resolve_model(model, "liver").card.int8 is not None
            batch = batch_benchmark(tmp_path, model, cache, args.batch, args.batch_slices, int8)
            load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
            print(f"\nmedseg infer over a folder, {os.cpu_count()} CPU(s), load {load}:", *batch, sep="\n")
            if args.batch_only:
                return
        make_series(series, args.slices)
        organ = ["--organ", args.organ] if args.organ else []
        cold = run_cli(series, model, tmp_path / "out1", cache, organ)
        runs = sorted(
            (run_cli(series, model, tmp_path / f"out2-{i}", cache, organ), i) for i in range(max(args.repeat, 1))
        )
        warm, warm_dir = runs[len(runs) // 2][0], tmp_path / f"out2-{runs[len(runs) // 2][1]}"
        core = core_benchmark(series, model, cache)
        nproc = os.cpu_count()
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        head = f"512x512x{args.slices} CT DICOM, model {model}, --organ {args.organ or 'liver'}"
        print(f"\nmedseg infer benchmark: {head}, {nproc} CPU(s), load {load}")
        print(f"model grid {core['shape']}, {core['windows']} windows of {os.environ.get('ROI', 'the card roi')}")
        print(f"{'measurement':58s} {'wall s':>8s} {'peak RSS MB':>12s}")
        print(f"{'(a) medseg infer DICOM->SEG, cold (first use: OpenVINO export)':58s} {cold[0]:8.2f} {cold[1]:12.0f}")
        label = f"(a) medseg infer DICOM->SEG, warm, median of {len(runs)}"
        print(f"{label:58s} {warm[0]:8.2f} {warm[1]:12.0f}")
        print(f"    warm runs: {', '.join(f'{r[0][0]:.2f}' for r in runs)} s")
        print(f"{'(b) MONAI sliding_window_inference, eager torch, batch 1':58s} {core['monai_b1_s']:8.2f}")
        print(f"{'(c) medseg core (OpenVINO f32, fixed shape)':58s} {core['ours_s']:8.2f}")
        print(f"{'    for reference: medseg loop, ONNX Runtime (fixed shape)':58s} {core['onnx_s']:8.2f}")
        print(f"{'    for reference: medseg loop, eager torch, batch 4':58s} {core['eager_b4_s']:8.2f}")
        print(
            f"ratio (b)/(c): {core['ratio']:.2f}x   parity (c) vs (b): max |logit diff| "
            f"{core['max_abs_diff']:.2e}, argmax agreement {core['argmax_agreement']:.6f}"
        )
        if "int8_s" in core:
            print(f"{'(d) medseg core, INT8 (OpenVINO, sub-pixel decoder)':58s} {core['int8_s']:8.2f}")
            print(
                f"ratio (b)/(d): {core['monai_b1_s'] / core['int8_s']:.2f}x, "
                f"(c)/(d): {core['ours_s'] / core['int8_s']:.2f}x"
                f"   parity (d) vs (b): argmax agreement {core['int8_argmax_agreement']:.6f}"
            )
            int8_warm = run_cli(series, model, tmp_path / "out3", cache, ["--precision", "int8", *organ])
            label = "(a) medseg infer DICOM->SEG, warm, --precision int8"
            print(f"{label:58s} {int8_warm[0]:8.2f} {int8_warm[1]:12.0f}")
        for name, goals in (
            ("#12 (warm e2e < 10 s, peak RSS < 2 GB)", [warm[0] < 10, warm[1] < 2048]),
            ("#19 (warm e2e <= 3 s, <= 1 GB, core ratio >= 5: INT8 where the model has it)",
             [warm[0] <= 3, warm[1] <= 1024, core["monai_b1_s"] / core.get("int8_s", core["ours_s"]) >= 5]),
        ):
            verdict = "met" if all(goals) else f"NOT all met {goals}"
            if args.slices != GOAL_SLICES:
                verdict = f"not judged (set for --slices {GOAL_SLICES})"
            print(f"goals {name}:", verdict)
        print(f"exit codes: cold {cold[2]}, warm {', '.join(str(r[0][2]) for r in runs)}")
        stages = json.loads((warm_dir / "series" / "summary.json").read_text())["timings_s"]
        print("warm run, seconds per stage (summary.json):", ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
