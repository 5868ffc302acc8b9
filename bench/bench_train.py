"""Benchmark training and report accuracy.

Run: `.venv/bin/python bench/bench_train.py throughput [--config configs/liver.yaml] [--iterations 20]`
     `.venv/bin/python bench/bench_train.py loop --config C --device cuda --seconds 120 [--workers 6]`
     `.venv/bin/python bench/bench_train.py accuracy [--model liver] [--out results.json]`

throughput: the config's network, loss, optimiser and data stream (synthetic + real patches, the config's
  DataLoader workers) for a short run: iterations/s, s/epoch (an epoch = one patch per training case), seconds of
  data generation per patch, and peak RSS of this process and its workers.
loop: `medseg train`'s own loop (`medseg.train.loop.train`: the config's loss, augmentation, data workers, AMP and
  checkpoints) for a time budget on a device, with MLflow off as on DDP ranks other than 0 (a GPU machine that gets
  only the inference wheels cannot take MLflow's): iterations per second after the cases are prepared.
accuracy: Dice and HD95 of an installed model on the locked real test CT (data_manifests/liver_test_locked.json)
  and on the real validation CT of liver_v1, through the inference engine's path (`medseg.infer.predict_labels`),
  printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def throughput(config: Path, iterations: int, warmup: int) -> dict[str, float]:
    import numpy as np
    import torch
    from monai.losses import DiceCELoss

    from medseg.digests import default_data_root
    from medseg.models.network import build_network
    from medseg.train.config import load_config
    from medseg.train.data import PatchStream, load_cases
    from medseg.train.manifest import load_manifest
    from medseg.train.runner import resolve_manifest
    from medseg.train.synth.prepare import default_cache_dir

    cfg, _ = load_config(config)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    manifest, _ = load_manifest(resolve_manifest(cfg, config))
    t = time.perf_counter()
    cases = load_cases(manifest, "train", cfg, default_data_root(), default_cache_dir())
    load_s = time.perf_counter() - t
    stream = PatchStream(cases, cfg, seed=1)
    t = time.perf_counter()
    for i in range(8):
        stream.sample(np.random.default_rng(i))
    gen_s = (time.perf_counter() - t) / 8
    net = build_network(cfg.network)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)
    it = iter(loader)
    times = []
    for i in range(warmup + iterations):
        t = time.perf_counter()
        b = next(it)
        opt.zero_grad()
        loss_fn(net(b["image"]), b["label"]).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    s_it = float(np.median(times))
    n_train = len(cases.anatomy) + len(cases.real)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "config": str(config), "patch": list(cfg.data.patch_size), "batch_size": cfg.data.batch_size,
        "threads": torch.get_num_threads(), "iterations_per_s": 1 / s_it, "s_per_iteration": s_it,
        "s_per_epoch": s_it * n_train / cfg.data.batch_size, "training_cases": n_train,
        "data_s_per_patch": gen_s, "case_loading_s": load_s,
        "peak_rss_mb": self_kb / 1024, "peak_rss_worker_mb": child_kb / 1024,
    }  # fmt: skip


def loop_speed(config: Path, device: str, seconds: float, workers: int | None, data_root: Path | None,
               out: Path) -> dict[str, object]:  # fmt: skip
    """`medseg.train.loop.train` for `seconds` on `device` (validation off, so only optimisation steps are timed)."""
    import torch

    from medseg.digests import default_data_root
    from medseg.train.config import load_config
    from medseg.train.data import load_cases
    from medseg.train.distributed import init_distributed
    from medseg.train.loop import build_valset, train
    from medseg.train.manifest import load_manifest, verify_manifest
    from medseg.train.runner import resolve_manifest
    from medseg.train.synth.prepare import default_cache_dir
    from medseg.train.tracking import Tracker

    cfg, cfg_sha = load_config(config)
    run = cfg.run.model_copy(update={"time_budget_min": seconds / 60, "val_every": 10**9, "max_iterations": 10**9})
    data = cfg.data.model_copy(update={"num_workers": cfg.data.num_workers if workers is None else workers})
    cfg = cfg.model_copy(update={"run": run, "data": data})
    manifest_path = resolve_manifest(cfg, config)
    manifest, man_sha = load_manifest(manifest_path)
    root = data_root or default_data_root()
    verify_manifest(manifest, root, manifest_path)
    dist = init_distributed(device)
    if cfg.run.threads and dist.device == "cpu":
        torch.set_num_threads(cfg.run.threads)
    t = time.perf_counter()
    cases = load_cases(manifest, "train", cfg, root, default_cache_dir())
    prepare_s = time.perf_counter() - t
    val = build_valset(type(cases)([], []), cfg)
    result = train(cfg, cfg_sha, man_sha, cases, val, out, dist, Tracker(out, None, "bench", enabled=False))
    it, el = result.progress.iteration, result.progress.elapsed_s
    return {"device": dist.device, "gpu": torch.cuda.get_device_name(0) if dist.device.startswith("cuda") else None,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "workers": cfg.data.num_workers,
            "patch": list(cfg.data.patch_size), "batch_size": cfg.data.batch_size,
            "iterations": it, "elapsed_s": el, "it_per_s": it / el if el else 0.0, "case_prepare_s": prepare_s,
            "stopped_by": result.stopped_by, "config": str(config)}  # fmt: skip


def accuracy(model_name: str, device: str, test: str = "liver_test_locked", val: str = "liver_v1",
             trained: str | None = None) -> dict[str, object]:  # fmt: skip
    """Dice/HD95 on the model's locked test set, its real validation CT and (reported, marked as such) the real
    manual CTs it was trained on, keyed `locked_test`, `validation` and `trained_on`."""
    from medseg.digests import default_data_root
    from medseg.models.registry import resolve_model
    from medseg.train.accuracy import evaluate_model, metrics_table
    from medseg.train.manifest import load_manifest

    model = resolve_model(model_name, organ="liver")
    out: dict[str, object] = {"model": model.card.name, "version": model.card.version,
                              "weights_sha256": model.verify()}
    sets = [("locked_test", test, "test"), ("validation", val, "val")]
    if trained:
        sets.append(("trained_on", trained, "train"))
    for key, name, split in sets:
        manifest, sha = load_manifest(REPO / "data_manifests" / f"{name}.json")
        scores = evaluate_model(model, manifest, split, default_data_root(), device)
        if key == "trained_on":
            scores = [c for c in scores if c.kind == "manual"]
        out[key] = metrics_table(scores, name, sha)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--config", type=Path, default=REPO / "configs/liver.yaml")
    t.add_argument("--iterations", type=int, default=10)
    t.add_argument("--warmup", type=int, default=2)
    lp = sub.add_parser("loop")
    lp.add_argument("--config", type=Path, default=REPO / "configs/abdomen_stage5.yaml")
    lp.add_argument("--device", default="cpu")
    lp.add_argument("--seconds", type=float, default=60.0)
    lp.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    lp.add_argument("--data-root", type=Path, default=None)
    lp.add_argument("--run-dir", type=Path, default=None, help="checkpoints go here (default: a temporary folder)")
    a = sub.add_parser("accuracy")
    a.add_argument("--model", default="liver")
    a.add_argument("--device", default="cpu")
    a.add_argument("--test-manifest", default="liver_test_locked", help="the model's locked test set")
    a.add_argument("--val-manifest", default="liver_v1", help="the training manifest (its real val CT)")
    a.add_argument("--trained-manifest", default=None, help="also report its real manual training CTs")
    for p in (t, lp, a):
        p.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.what == "loop":
        import tempfile

        with tempfile.TemporaryDirectory(prefix="medseg-loop-") as tmp:
            run_dir = args.run_dir or Path(tmp)
            result = loop_speed(args.config, args.device, args.seconds, args.workers, args.data_root, run_dir)
        print(json.dumps(result, indent=1))
    elif args.what == "throughput":
        result = throughput(args.config, args.iterations, args.warmup)
        for k, v in result.items():
            print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    else:
        result = accuracy(args.model, args.device, args.test_manifest, args.val_manifest, args.trained_manifest)
        print("| set | case | label | Dice | HD95 (mm) |\n|---|---|---|---|---|")
        for key in ("locked_test", "validation", "trained_on"):
            for c in result.get(key, {}).get("cases", []):  # type: ignore[attr-defined]
                hd = "n/a" if c["hd95_mm"] is None else f"{c['hd95_mm']:.1f}"
                print(f"| {key} ({result[key]['test_set']['manifest']}) | {c['case']} | {c['kind']} "  # type: ignore[index]
                      f"| {c['dice']:.4f} | {hd} |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
