"""The training loop: DiceCE, AdamW with warm-up and cosine/poly decay, sliding-window validation Dice, best and
last checkpoints, resume, a wall-clock budget, Ctrl-C/SIGTERM saving, and DDP (torchrun) support.

Only rank 0 validates, logs and writes files. Events go to `on_event` (the CLI prints them); the library never prints.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import InvalidInputError, ProcessingError
from medseg.preprocess import hu_window
from medseg.train.checkpoint import Progress, read_torch_file, save_checkpoint, save_weights
from medseg.train.config import TrainConfig
from medseg.train.data import CaseSets, PatchStream
from medseg.train.distributed import DistContext
from medseg.train.evaluate import CaseScore, predict_volume, score
from medseg.train.synth.anatomy import AnatomyParams
from medseg.train.synth.appearance import AppearanceParams
from medseg.train.synth.generator import synth_volume
from medseg.train.tracking import Tracker

Event = Callable[[str, dict[str, Any]], None]


@dataclass
class ValSet:
    """Validation volumes at the model grid, [0, 1]-scaled, with their liver masks."""

    names: list[str]
    kinds: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray]


@dataclass
class TrainResult:
    progress: Progress
    best_weights: Path
    last_weights: Path
    stopped_by: str


def build_valset(cases: CaseSets, cfg: TrainConfig) -> ValSet:
    """Real validation CTs (liver label only) plus a fixed-seed rendering of the first held-out label maps."""
    v = ValSet([], [], [], [])
    liver = np.uint8(1 + cfg.organs.index("liver"))
    for rc in cases.real:
        v.names.append(rc.name), v.kinds.append("real")
        v.images.append(hu_window(rc.image, cfg.intensity.a_min, cfg.intensity.a_max))
        v.labels.append(rc.label * liver)
    appearance = AppearanceParams(p_random_intensity=0.0)
    for i, ac in enumerate(cases.anatomy[: cfg.validation.synthetic_cases]):
        s = synth_volume(ac, np.random.default_rng([cfg.data.synth_val_seed, i]), appearance, cfg.organs,
                         AnatomyParams(**cfg.augment.anatomy.model_dump()))
        v.names.append(f"synth_{ac.name}"), v.kinds.append("synthetic")
        v.images.append(hu_window(s.image, cfg.intensity.a_min, cfg.intensity.a_max)), v.labels.append(s.label)
    return v


def organ_dice(pred: np.ndarray, ref: np.ndarray, organs: tuple[str, ...]) -> dict[str, float]:
    """Dice of every foreground class present in `ref` (a class absent from the reference is skipped)."""
    out = {}
    for i, organ in enumerate(organs, start=1):
        r = ref == i
        if r.any():
            p = pred == i
            out[organ] = float(2 * np.logical_and(p, r).sum() / (p.sum() + r.sum()))
    return out


def validate(net: torch.nn.Module, val: ValSet, cfg: TrainConfig, device: str,
             organ_scores: dict[str, dict[str, float]] | None = None) -> tuple[float, list[CaseScore]]:  # fmt: skip
    """Per-case liver Dice/HD95 and the selection score (weighted mean of real liver Dice and synthetic mean Dice
    over all organs, which is the liver Dice for a liver-only model); per-organ Dice go into `organ_scores`."""
    net.eval()
    scores = []
    liver = 1 + cfg.organs.index("liver")
    synth_means = []
    for name, kind, img, lab in zip(val.names, val.kinds, val.images, val.labels, strict=True):
        pred = predict_volume(net, img, cfg.validation.roi_size, cfg.validation.overlap,
                              cfg.validation.sw_batch_size, device)  # fmt: skip
        scores.append(score(pred == liver, lab == liver, cfg.spacing, name, kind))
        per_organ = organ_dice(pred, lab, cfg.organs)
        if organ_scores is not None:
            organ_scores[name] = per_organ
        if kind == "synthetic":
            synth_means.append(float(np.mean(list(per_organ.values()) or [0.0])))
    net.train()
    real = [s.dice for s in scores if s.kind == "real"]
    synth = synth_means
    if real and synth:
        w = cfg.validation.weight_real
        sel = w * float(np.mean(real)) + (1 - w) * float(np.mean(synth))
    else:
        sel = float(np.mean(real or synth or [0.0]))
    return sel, scores


def lr_factor(cfg: TrainConfig, iteration: int, elapsed_s: float) -> float:
    """Warm-up, then decay over progress = max(iterations, wall-clock) fraction of the run's limits."""
    o = cfg.optim
    warm = min(1.0, (iteration + 1) / max(o.warmup_iterations, 1))
    p = iteration / cfg.run.max_iterations
    if cfg.run.time_budget_min:
        p = max(p, elapsed_s / (cfg.run.time_budget_min * 60))
    p = min(max(p, 0.0), 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * p)) if o.schedule == "cosine" else (1 - p) ** 0.9
    return warm * (o.min_lr_ratio + (1 - o.min_lr_ratio) * decay)


def init_from(net: torch.nn.Module, weights: Path, data: bytes | None = None) -> None:
    """Warm start from another model's state_dict: equal tensors are copied, a tensor whose class dimension grew
    (the output layers) gets the old classes copied into its leading block and keeps random init elsewhere, except
    that new input channels feeding old outputs start at zero: the old classes' logits are exactly the old model's.
    `data`: the file's bytes as read and digested for the run's record (parsed from memory, not read again)."""
    from medseg.train.manifest import REPO

    path = weights if weights.is_absolute() else REPO / weights
    src = read_torch_file(path, "init_weights", "Name a model's weights file (a state_dict) in init_weights.", data)
    if not isinstance(src, dict) or not all(isinstance(v, torch.Tensor) for v in src.values()):
        raise InvalidInputError("init_weights is not a state_dict (names and tensors)", path=path,
                                hint="Name a model's weights file, not a training checkpoint.")  # fmt: skip
    own = net.state_dict()
    with torch.no_grad():
        for k, v in own.items():
            fits = k in src and src[k].dim() == v.dim()
            if not fits or any(a > b for a, b in zip(src[k].shape, v.shape, strict=True)):
                raise InvalidInputError(f"init_weights do not fit this network at {k}", path=path)
            v[tuple(slice(0, n) for n in src[k].shape)] = src[k].to(v.dtype)
        for name, mod in net.named_modules():
            if isinstance(mod, torch.nn.Conv3d | torch.nn.ConvTranspose3d) and f"{name}.weight" in src:
                out_dim, in_dim = (1, 0) if isinstance(mod, torch.nn.ConvTranspose3d) else (0, 1)
                old = src[f"{name}.weight"].shape
                idx = [slice(None)] * mod.weight.dim()
                idx[out_dim], idx[in_dim] = slice(0, old[out_dim]), slice(old[in_dim], None)
                mod.weight[tuple(idx)] = 0.0


class _Stop:
    """Turns SIGTERM into a graceful stop (checkpoint, then exit) in the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def diverged(out: Path, iteration: int, what: str) -> ProcessingError:
    """The error that stops a run whose loss or gradients stopped being finite (nothing from that step is kept)."""
    message = f"training diverged: {what} is not finite at iteration {iteration}; no weights from it were saved"
    return ProcessingError(message, path=out, hint="Lower optim.lr or resume from an earlier checkpoint.")


def train(cfg: TrainConfig, config_sha: str, manifest_sha: str, train_cases: CaseSets, val: ValSet, out: Path,
          dist: DistContext, tracker: Tracker, resume: dict[str, Any] | None = None,
          on_event: Event = lambda kind, fields: None, training_sha: str = "",
          resume_path: Path | None = None, init_data: bytes | None = None) -> TrainResult:  # fmt: skip
    """Run the optimisation until max_iterations, the time budget, SIGTERM or Ctrl-C; save checkpoints on rank 0.

    `resume` is a checkpoint already read and checked (`load_checkpoint`). A non-finite loss or gradient norm stops
    the run with ProcessingError; SIGTERM saves a checkpoint and then raises KeyboardInterrupt, as Ctrl-C does.
    Without validation volumes (a speed bench) no best weights are written: last weights are never called best."""
    from medseg.monai_import import import_monai

    import_monai()
    from monai.utils import set_determinism

    from medseg.models.network import build_network
    from medseg.train.losses import marginal_dice_ce

    set_determinism(seed=cfg.run.seed + dist.rank)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = dist.device
    net = build_network(cfg.network)
    if cfg.init_weights and resume is None:
        init_from(net, Path(cfg.init_weights), init_data)
        on_event("stage", {"message": f"initialised from {cfg.init_weights}"})
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    progress = Progress()
    ckpt_dir = out / "checkpoints"
    if resume is not None:
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        progress = Progress(**resume["progress"])
        on_event("resume", {"iteration": progress.iteration, "checkpoint": str(resume_path)})
    model = dist.wrap(net)
    stream = PatchStream(train_cases, cfg, cfg.run.seed, dist.rank)
    stream.start_index = progress.iteration * cfg.data.batch_size
    loader = torch.utils.data.DataLoader(
        stream, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
        worker_init_fn=lambda _: torch.set_num_threads(1), persistent_workers=cfg.data.num_workers > 0,
        prefetch_factor=2 if cfg.data.num_workers > 0 else None,
    )  # fmt: skip
    best_path, last_path = ckpt_dir / "best.pt", ckpt_dir / "last.pt"
    best_weights, last_weights = out / "best_weights.pt", out / "last_weights.pt"
    metrics_log = out / "metrics.jsonl"

    def checkpoint(reason: str) -> None:
        if dist.is_main:
            save_checkpoint(last_path, net, opt, progress, config_sha, manifest_sha, training_sha)
            save_weights(last_weights, net)
            on_event("checkpoint", {"iteration": progress.iteration, "reason": reason, "path": str(last_path)})

    def log(record: dict[str, Any]) -> None:
        if dist.is_main:
            with metrics_log.open("a") as f:
                f.write(json.dumps(record) + "\n")

    start = time.monotonic() - progress.elapsed_s
    last_ckpt = time.monotonic()
    stopped_by = "max_iterations"
    window_loss: list[float] = []
    net.train()
    with _Stop() as stop:
        try:
            it = iter(loader)
            while progress.iteration < cfg.run.max_iterations:
                t0 = time.monotonic()
                batch = next(it)
                t_data = time.monotonic() - t0
                factor = lr_factor(cfg, progress.iteration, progress.elapsed_s)
                for g in opt.param_groups:
                    g["lr"] = cfg.optim.lr * factor
                x, y = batch["image"].to(device), batch["label"].to(device)
                opt.zero_grad(set_to_none=True)
                loss = marginal_dice_ce(model(x), y, batch["labelled"].to(device), dice_weight=cfg.loss.dice_weight,
                                        ce_weight=cfg.loss.ce_weight)
                if not math.isfinite(float(loss.detach())):
                    raise diverged(out, progress.iteration + 1, "the loss")
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
                if not math.isfinite(float(norm)):
                    raise diverged(out, progress.iteration + 1, "the gradient norm")
                opt.step()
                progress.iteration += 1
                progress.elapsed_s = time.monotonic() - start
                lv = float(loss.detach())
                window_loss.append(lv)
                step = {"iteration": progress.iteration, "loss": lv, "lr": cfg.optim.lr * factor,
                        "s_per_it": time.monotonic() - t0, "data_s": t_data,
                        "elapsed_s": progress.elapsed_s}  # fmt: skip
                on_event("iter", step)
                if progress.iteration % 10 == 0 and dist.is_main:
                    tracker.log_metrics({"train_loss": float(np.mean(window_loss)), "lr": step["lr"],
                                         "s_per_it": step["s_per_it"]}, progress.iteration)  # fmt: skip
                    window_loss.clear()
                log_step = progress.iteration % cfg.run.val_every == 0
                out_of_time = bool(cfg.run.time_budget_min and progress.elapsed_s >= cfg.run.time_budget_min * 60)
                final = out_of_time or progress.iteration >= cfg.run.max_iterations
                if (log_step or final) and dist.is_main and val.images:
                    organ_scores: dict[str, dict[str, float]] = {}
                    sel, scores = validate(net, val, cfg, device, organ_scores)
                    rec = {"iteration": progress.iteration, "elapsed_s": progress.elapsed_s, "val_score": sel,
                           "cases": [asdict(s) for s in scores], "organ_dice": organ_scores}  # fmt: skip
                    improved = sel > progress.best_score
                    if improved:
                        progress.best_score, progress.best_iteration = sel, progress.iteration
                        save_checkpoint(best_path, net, opt, progress, config_sha, manifest_sha, training_sha)
                        save_weights(best_weights, net)
                    progress.history.append({k: rec[k] for k in ("iteration", "val_score")})
                    log(rec)
                    if improved:
                        checkpoint("best")
                        last_ckpt = time.monotonic()
                    tracker.log_metrics({"val_score": sel, **{f"val_dice_{s.case}": s.dice for s in scores}},
                                        progress.iteration)  # fmt: skip
                    on_event("val", {**rec, "improved": improved, "best_score": progress.best_score})
                    progress.elapsed_s = time.monotonic() - start
                if dist.is_main and time.monotonic() - last_ckpt > cfg.run.checkpoint_every_min * 60:
                    checkpoint("interval")
                    last_ckpt = time.monotonic()
                if dist.agree_stop(out_of_time or stop.requested):
                    stopped_by = "sigterm" if stop.requested else "time_budget"
                    break
        except KeyboardInterrupt:
            checkpoint("interrupted")
            raise
    checkpoint(stopped_by)
    if stopped_by == "sigterm":
        raise KeyboardInterrupt("SIGTERM")
    if dist.is_main and val.images and not best_weights.exists():
        raise ProcessingError("no validated best weights were written", path=best_weights,
                              hint="Training needs validation cases in the manifest.")  # fmt: skip
    return TrainResult(progress, best_weights, last_weights, stopped_by)
