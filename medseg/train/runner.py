"""`run_training`: config + manifest -> verified data -> training loop -> MLflow record and run summary.

Everything that can refuse a run (device, config, manifest content and digests, the checkpoint to resume, the run
folder) is checked before the run folder is written, data is prepared or an MLflow run is opened.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from medseg.digests import default_data_root
from medseg.errors import InvalidInputError, UsageError
from medseg.train.checkpoint import load_checkpoint, save_weights
from medseg.train.config import TrainConfig, load_config
from medseg.train.distributed import init_distributed
from medseg.train.loop import Event, TrainResult, build_valset, train
from medseg.train.manifest import REPO, Manifest, check_manifest, load_manifest, verify_manifest
from medseg.train.synth.prepare import default_cache_dir
from medseg.train.tracking import Tracker, git_commit, package_versions

LOCK_NAME = ".train.lock"


@dataclass
class RunInfo:
    """What a finished (or interrupted) run produced, for the CLI, the audit trail and the model card."""

    run_dir: Path
    config_sha256: str
    manifest_path: Path
    manifest_sha256: str
    mlflow_run_id: str | None
    tracking_uri: str
    result: TrainResult | None
    is_main: bool


def resolve_manifest(cfg: TrainConfig, config_path: Path) -> Path:
    """The manifest named by the config: relative to the config's folder, else to the repository."""
    p = Path(cfg.data.manifest)
    for base in (config_path.parent, REPO, Path.cwd()):
        if (base / p).is_file():
            return (base / p).resolve()
    raise InvalidInputError(f"manifest {p} not found", path=config_path, hint="Paths are relative to the repository.")


def manifest_reference(path: Path) -> str:
    """How a manifest is named in records: its path in the repository, else its file name only (no folders)."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return path.name


def keyed_reference(path: Path, digest: str) -> str:
    """How a manifest (or init_weights file) is named in records: its path in the repository, else only its digest
    (no name that could carry a patient's name, no folders)."""
    ref = manifest_reference(path)
    return ref if ref != path.name or path.resolve().parent == REPO else f"sha256:{digest}"


@dataclass(frozen=True)
class InitWeights:
    """The config's `init_weights` file, read once: its bytes (what the network starts from), their SHA-256 and the
    reference recorded for it (its path in the repository, else `sha256:<digest>`: no folder or file name that
    could carry a patient's name reaches a record)."""

    path: Path
    data: bytes
    sha256: str
    reference: str


def read_init_weights(cfg: TrainConfig) -> InitWeights | None:
    """The config's `init_weights` (relative to the repository), read and digested once; None without one."""
    import hashlib

    if not cfg.init_weights:
        return None
    path = Path(cfg.init_weights) if Path(cfg.init_weights).is_absolute() else REPO / cfg.init_weights
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"init_weights cannot be read: {exc.strerror or exc}", path=path,
                                hint="Name a model's weights file in init_weights.") from exc  # fmt: skip
    digest = hashlib.sha256(data).hexdigest()
    return InitWeights(path, data, digest, keyed_reference(path, digest))


def check_init_unchanged(previous: dict[str, Any], init: InitWeights | None, config_path: Path) -> None:
    """Refuse to resume a run whose init_weights file is not the one it started from (another SHA-256, or none now
    where it had one): the resumed run's record would name start weights it never had."""
    recorded = previous.get("init_weights_sha256")
    if recorded and (init is None or init.sha256 != recorded):
        where = init.path if init else config_path
        raise InvalidInputError(f"init_weights is not the file the run started from (SHA-256 {recorded[:12]}... "
                                "recorded in its run.json)", path=where,
                                hint="Restore the run's start weights, or start a new run.")  # fmt: skip


def recorded_config(cfg: TrainConfig, manifest_ref: str, init: InitWeights | None) -> dict[str, Any]:
    """The config as records show it (MLflow params and config artifact, the model card): `data.manifest` and
    `init_weights` replaced by their references (repository path, else `sha256:<digest>`), never a local path."""
    params = cfg.model_dump(mode="json")
    params["data"]["manifest"] = manifest_ref
    if init is not None:
        params["init_weights"] = init.reference
    return params


def check_labels(cfg: TrainConfig, config_path: Path) -> None:
    """Refuse (exit 3, naming the config and its `labels` key) a class the training data cannot label: every organ
    must be one of the generator's `organ_tissues` (medseg/train/synth/tissues.yaml), else it would be blamed on
    that table mid-run or trained as a class never labelled."""
    from medseg.train.synth.tissues import tissue_table

    known = tissue_table().raw["organ_tissues"]
    unknown = [organ for organ in cfg.organs if organ not in known]
    if unknown:
        raise InvalidInputError(f"labels: {', '.join(map(repr, unknown))} is not an organ the training data can "
                                f"label (known: {', '.join(sorted(known))})", path=config_path,
                                hint="Fix the `labels` key of the config.")  # fmt: skip


def check_device(device: str) -> None:
    """Refuse a --device other than auto, cpu, cuda or cuda:N (UsageError, before any work)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device {device!r} is not one of auto, cpu, cuda, cuda:N")


def checkpoint_run_dir(resume: Path) -> Path:
    """The run folder a checkpoint belongs to (`RUN/checkpoints/last.pt` -> RUN)."""
    parent = resume.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def check_resume(state: dict[str, Any], resume: Path, cfg: TrainConfig, cfg_sha: str, man_sha: str) -> None:
    """Refuse a checkpoint of another training: another manifest, another config (run-length settings aside;
    exactly the same file for checkpoints without `training_sha256`), or another network."""
    if state.get("manifest_sha256") != man_sha:
        raise InvalidInputError("checkpoint was trained on another manifest (SHA-256 differs)", path=resume,
                                hint="Resume with the run's own manifest, or start a new run.")  # fmt: skip
    recorded = state.get("training_sha256")
    same = recorded == cfg.training_sha256() if recorded else state.get("config_sha256") == cfg_sha
    if not same:
        raise InvalidInputError("checkpoint was trained with another config (only run.max_iterations, "
                                "time_budget_min, checkpoint_every_min, threads, data.num_workers and the manifest "
                                "path may change)",
                                path=resume, hint="Resume with the run's own config, or start a new run.")  # fmt: skip
    from medseg.models.network import build_network

    own = build_network(cfg.network).state_dict()
    saved = state["model"]
    wrong = next((k for k in own if k not in saved or tuple(saved[k].shape) != tuple(own[k].shape)), None)
    if wrong is not None or set(saved) - set(own):
        where = wrong or sorted(set(saved) - set(own))[0]
        raise InvalidInputError(f"checkpoint does not fit the network of this config (at {where})", path=resume,
                                hint="Use the config the checkpoint was trained with.")  # fmt: skip


def best_of_run(state: dict[str, Any], resume: Path) -> dict[str, Any] | None:
    """The best checkpoint of the run `resume` belongs to, checked to be the one its progress names; None when no
    validation has run yet. Refuses a run folder that lacks it (last weights are never labelled best)."""
    best_it = int(state["progress"].get("best_iteration", -1))
    if best_it < 0:
        return None
    path = checkpoint_run_dir(resume) / "checkpoints" / "best.pt"
    if not path.is_file():
        raise InvalidInputError(f"the run folder of this checkpoint lacks checkpoints/best.pt (best at it {best_it})",
                                path=path, hint="Resume from a checkpoint inside its complete run folder.")  # fmt: skip
    best = load_checkpoint(path)
    if int(best["progress"].get("best_iteration", -2)) != best_it or best.get("manifest_sha256") != state.get(
        "manifest_sha256"
    ):
        raise InvalidInputError(f"checkpoints/best.pt is not the best (it {best_it}) of this checkpoint's run",
                                path=path, hint="Resume from a checkpoint inside its complete run folder.")  # fmt: skip
    return best


def newer_best(state: dict[str, Any], resume: Path) -> dict[str, Any] | None:
    """The run's `checkpoints/best.pt` when it is a later state of the same training than the checkpoint `resume`
    (a kill after an improving validation wrote best.pt and before last.pt followed): same manifest and training
    config, a later iteration that is its own best, and a validation history that continues the checkpoint's. Resuming
    from it loses nothing; None otherwise."""
    path = checkpoint_run_dir(resume) / "checkpoints" / "best.pt"
    if not path.is_file() or path.resolve() == resume.resolve():
        return None
    best = load_checkpoint(path)
    key = "training_sha256" if state.get("training_sha256") else "config_sha256"
    same = all(best.get(k) == state.get(k) for k in ("manifest_sha256", key))
    bp, sp = best["progress"], state["progress"]
    later = int(bp["iteration"]) > int(sp["iteration"]) and bp.get("best_iteration") == bp["iteration"]
    continues = list(bp.get("history", []))[: len(sp.get("history", []))] == list(sp.get("history", []))
    return best if same and later and continues else None


# What a run writes before its first checkpoint; MLflow's default store (mlflow.db, mlartifacts) is never removed.
EARLY_RUN_FILES = frozenset({"run.json", "config.yaml", "manifest.json", "metrics.jsonl", "mlflow.db", "mlartifacts"})
STORE_FILES = frozenset({"mlflow.db", "mlartifacts"})


def killed_before_checkpoint(out: Path) -> bool:
    """Whether `out` holds only what a run killed before its first checkpoint left (no checkpoints/, no
    summary.json, nothing but the files a run writes first): nothing there can be resumed, so a new run may start."""
    content = {p.name for p in out.iterdir() if p.name != LOCK_NAME} if out.is_dir() else set()
    return bool(content) and content <= EARLY_RUN_FILES and bool(content - STORE_FILES)


def clear_killed_run(out: Path, on_event: Event) -> None:
    """Remove what a run killed before its first checkpoint left (called with the run lock held, so that run is not
    alive), marking its MLflow run FAILED when run.json names it; MLflow's default store in the folder is kept."""
    from medseg.train.tracking import mark_failed

    previous = _previous_run(out)
    if previous.get("mlflow_run_id") and previous.get("tracking_uri"):
        note = mark_failed(str(previous["tracking_uri"]), str(previous["mlflow_run_id"]))
        on_event("stage", {"message": note})
    for name in EARLY_RUN_FILES - STORE_FILES:
        (out / name).unlink(missing_ok=True)
    on_event("stage", {"message": "the run folder held a run killed before its first checkpoint: starting anew"})


def checked_resume(resume: Path, cfg: TrainConfig, cfg_sha: str, man_sha: str, init: InitWeights | None,
                   config_path: Path, on_event: Event) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The checkpoint to resume from (the run's newer best.pt when a kill left last.pt behind it) and the run's
    best checkpoint, every check passed; called with the run lock held when resuming into the checkpoint's own
    folder, so a training still running there is refused (exit 2) before its checkpoints are read."""
    state = load_checkpoint(resume)
    later = newer_best(state, resume)
    if later is not None:
        on_event("stage", {"message": f"checkpoints/best.pt (it {later['progress']['iteration']}) is newer than "
                                      f"{resume.name} (it {state['progress']['iteration']}): resuming from it"})
        state = later
    check_resume(state, resume, cfg, cfg_sha, man_sha)
    check_init_unchanged(_previous_run(checkpoint_run_dir(resume)), init, config_path)
    return state, best_of_run(state, resume)


def check_run_folder(out: Path, resume: Path | None) -> None:
    """A new run needs a new or empty folder (or one a run killed before its first checkpoint left); a resumed one
    continues in its own folder or a new/empty one."""
    content = [p for p in out.iterdir() if p.name != LOCK_NAME] if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise UsageError("--out is not a folder", path=out)
    if not content or (resume is None and killed_before_checkpoint(out)):
        return
    if resume is None:
        raise UsageError("run folder already holds a run", path=out,
                         hint="Pass --resume RUN/checkpoints/last.pt to continue it or choose a new --out.")
    if checkpoint_run_dir(resume) != out.resolve():
        raise UsageError("run folder holds another run than the checkpoint's", path=out,
                         hint="Resume into the checkpoint's own run folder or a new --out.")  # fmt: skip


@contextmanager
def run_lock(out: Path, enabled: bool) -> Iterator[None]:
    """Hold an exclusive lock on the run folder for the whole training (a second one is refused, exit 2)."""
    if not enabled:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UsageError("another training is running in this run folder", path=out,
                             hint="Wait for it or choose another --out.") from exc  # fmt: skip
        yield
    finally:
        os.close(fd)


def hardware(device: str) -> str:
    """The device the run actually trained on, in words."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (torch CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def run_length(cfg: TrainConfig, cfg_sha: str) -> dict[str, Any]:
    """The settings a resume may change (they shape the learning-rate schedule: progress is iterations over
    max_iterations, or elapsed time over the budget) and the config's digest, as one segment ran with them."""
    return {"max_iterations": cfg.run.max_iterations, "time_budget_min": cfg.run.time_budget_min,
            "checkpoint_every_min": cfg.run.checkpoint_every_min, "threads": cfg.run.threads,
            "num_workers": cfg.data.num_workers, "config_sha256": cfg_sha}  # fmt: skip


def start_segment(out: Path, previous: dict[str, Any], iteration: int, device: str,
                  settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """run.json's list of training segments (one per start or resume) with this one appended: code, machine and
    the run-length settings it ran with (`run_length`)."""
    git = git_commit()
    segment = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "from_iteration": iteration,
               "git_commit": git["git_commit"], "git_dirty": git.get("git_dirty", "unknown"),
               "packages": package_versions(), "hardware": hardware(device), "run_length": settings or {}}  # fmt: skip
    return [*previous.get("segments", []), segment]


def schedule_change(segments: list[dict[str, Any]]) -> str | None:
    """One line when this segment's max_iterations or time budget differ from the previous segment's (the
    learning-rate schedule is stretched or shrunk from here on), else None."""
    if len(segments) < 2:
        return None
    before, now = segments[-2].get("run_length") or {}, segments[-1].get("run_length") or {}
    changed = [f"{k} {before[k]} -> {now.get(k)}" for k in ("max_iterations", "time_budget_min")
               if k in before and before[k] != now.get(k)]  # fmt: skip
    if not changed:
        return None
    return (f"resumed with {', '.join(changed)}: the learning-rate schedule follows the new setting from iteration "
            f"{segments[-1]['from_iteration']} (recorded per segment in run.json and summary.json)")


def restore_best(out: Path, best: dict[str, Any], resume: Path) -> None:
    """Bring the checkpoint run's best checkpoint, weights and validation log into a new run folder."""
    src = checkpoint_run_dir(resume)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "checkpoints" / "best.pt", out / "checkpoints" / "best.pt")
    save_weights(out / "best_weights.pt", best["model"])
    if (src / "metrics.jsonl").is_file():
        shutil.copyfile(src / "metrics.jsonl", out / "metrics.jsonl")


def run_training(config_path: Path, out: Path, resume: Path | None = None, tracking_uri: str | None = None,
                 data_root: Path | None = None, device: str = "auto",
                 on_event: Event = lambda kind, fields: None) -> RunInfo:  # fmt: skip
    """Train the model described by `config_path` into the run folder `out` (see `medseg train --help`)."""
    check_device(device)
    cfg, cfg_sha = load_config(config_path)
    check_labels(cfg, config_path)
    manifest_path = resolve_manifest(cfg, config_path)
    manifest, man_sha = load_manifest(manifest_path)
    check_manifest(manifest, manifest_path)
    if not manifest.split("val", "ct_pair") and cfg.validation.synthetic_cases == 0:
        raise InvalidInputError("no validation volumes: the manifest has no val ct_pair and "
                                "validation.synthetic_cases is 0", path=config_path)  # fmt: skip
    init = read_init_weights(cfg)
    is_main = int(os.environ.get("RANK", "0")) == 0
    lock_first = is_main and resume is not None and checkpoint_run_dir(resume) == out.resolve()
    state = best = None
    if resume is not None and not lock_first:
        state, best = checked_resume(resume, cfg, cfg_sha, man_sha, init, config_path, on_event)
    if is_main and not lock_first:
        check_run_folder(out, resume)
    with run_lock(out, is_main), process_settings_kept():
        if resume is not None and lock_first:
            state, best = checked_resume(resume, cfg, cfg_sha, man_sha, init, config_path, on_event)
        if is_main:
            check_run_folder(out, resume)
            if resume is None and killed_before_checkpoint(out):
                clear_killed_run(out, on_event)
        return _run(cfg, cfg_sha, config_path, manifest, man_sha, manifest_path, out, state, best, resume,
                    tracking_uri, data_root, device, on_event, init)  # fmt: skip


@contextmanager
def process_settings_kept() -> Iterator[None]:
    """Put back what a run sets for the whole process (torch threads, deterministic algorithms, cuDNN flags, the
    torch, numpy and `random` generators), so a run called from a notebook, a test or a service leaves its caller's
    process as it found it (deterministic mode, for one, fills every new torch tensor with NaN)."""
    import random

    import numpy as np

    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])


def _run(cfg: TrainConfig, cfg_sha: str, config_path: Path, manifest: Manifest, man_sha: str, manifest_path: Path,
         out: Path, state: dict[str, Any] | None, best: dict[str, Any] | None, resume: Path | None,
         tracking_uri: str | None, data_root: Path | None, device: str, on_event: Event,
         init: InitWeights | None = None) -> RunInfo:  # fmt: skip
    """The run proper, once every check has passed and the run folder is locked."""
    root = data_root or default_data_root()
    on_event("stage", {"message": f"verifying {len(manifest.entries)} manifest entries (SHA-256)"})
    verify_manifest(manifest, root, manifest_path)
    dist = init_distributed(device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    previous = _previous_run(checkpoint_run_dir(resume)) if resume else {}
    same_folder = resume is not None and checkpoint_run_dir(resume) == out.resolve()
    segments = start_segment(out, previous, state["progress"]["iteration"] if state else 0, dist.device,
                             run_length(cfg, cfg_sha))  # fmt: skip
    note = schedule_change(segments)
    if note:
        on_event("stage", {"message": note})
    on_event("stage", {"message": "preparing label maps and real CTs (cached after the first run)"})
    cache = default_cache_dir()
    from medseg.train.data import load_cases

    train_cases = load_cases(manifest, "train", cfg, root, cache, manifest_path)
    val_cases = load_cases(manifest, "val", cfg, root, cache, manifest_path)
    val = build_valset(val_cases, cfg) if dist.is_main else build_valset(type(val_cases)([], []), cfg)
    if dist.is_main and not val.images:
        raise InvalidInputError("no validation volumes could be built", path=manifest_path)
    on_event("stage", {"message": f"{len(train_cases.anatomy)} label maps + {len(train_cases.real)} real CTs for "
                                  f"training, {len(val.names)} validation volumes"})  # fmt: skip
    tracker = Tracker(out, tracking_uri, experiment=f"medseg-{cfg.organ}", enabled=dist.is_main)
    recorded = (previous.get("config_sha256"), previous.get("tracking_uri"))
    same_config = same_folder and recorded == (cfg_sha, tracker.uri)
    run_id = tracker.start(f"{cfg.name}-{cfg.version}", previous.get("mlflow_run_id") if same_config else None)
    status = "FAILED"
    try:
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if best is not None and resume is not None and not same_folder:
                restore_best(out, best, resume)
            elif best is not None:
                save_weights(out / "best_weights.pt", best["model"])
            shutil.copyfile(config_path, out / "config.yaml")
            shutil.copyfile(manifest_path, out / "manifest.json")
        mlflow_ref = keyed_reference(manifest_path, man_sha)
        init_record = {"init_weights": init.reference, "init_weights_sha256": init.sha256} if init else {}
        if dist.is_main:
            _write_json(out / "run.json", {"mlflow_run_id": run_id, "tracking_uri": tracker.uri,
                                           "config_sha256": cfg_sha, "segments": segments, **init_record})  # fmt: skip
            shown = recorded_config(cfg, mlflow_ref, init)
            if not same_config:
                tracker.log_params({"config": shown, "world_size": dist.world, "device": dist.device,
                                    **({"init_weights_sha256": init.sha256} if init else {})})  # fmt: skip
            seg = segments[-1]
            tags = {"git_commit": seg["git_commit"], "git_dirty": seg["git_dirty"], "hardware": seg["hardware"],
                    **{f"pkg.{k}": v for k, v in seg["packages"].items()},
                    "config_sha256": cfg_sha, "manifest_sha256": man_sha}  # fmt: skip
            if previous.get("mlflow_run_id") and not same_config:
                tags["resumed_from_run"] = previous["mlflow_run_id"]
            tracker.set_tags(tags)
            tracker.log_manifest(out / "manifest.json", man_sha, manifest.name, "training", mlflow_ref)
            tracker.log_text(yaml_text(shown), "config/config.yaml")
        result = train(cfg, cfg_sha, man_sha, train_cases, val, out, dist, tracker, state, on_event,
                       cfg.training_sha256(), resume, init.data if init else None)  # fmt: skip
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if dist.is_main and status != "FINISHED":
            try:
                tracker.end(status)
            except Exception as exc:  # the run's own failure is the error to report; this is a note beside it
                on_event("stage", {"message": f"MLflow run not marked {status}: {exc}".splitlines()[0]})
        if status != "FINISHED":
            dist.close()
    if dist.is_main:
        first = segments[0]
        summary = {"iterations": result.progress.iteration, "elapsed_s": result.progress.elapsed_s,
                   "best_score": result.progress.best_score, "best_iteration": result.progress.best_iteration,
                   "stopped_by": result.stopped_by, "config_sha256": cfg_sha, "manifest_sha256": man_sha,
                   "manifest": mlflow_ref, "manifest_file": mlflow_ref, **init_record,
                   "git_commit": first["git_commit"], "git_dirty": any(s["git_dirty"] != "false" for s in segments),
                   "packages": segments[-1]["packages"], "hardware": segments[-1]["hardware"],
                   "segments": segments, **weights_digests(out, result)}  # fmt: skip
        _write_json(out / "summary.json", summary)
        tracker.log_metrics({"best_val_score": result.progress.best_score}, result.progress.iteration)
        tracker.log_artifact(result.best_weights, "model")
        tracker.log_artifact(out / "summary.json", "model")
        tracker.end("FINISHED")
    dist.close()
    return RunInfo(out, cfg_sha, manifest_path, man_sha, run_id, tracker.uri, result, dist.is_main)


def weights_digests(out: Path, result: TrainResult) -> dict[str, str | None]:
    """SHA-256 of the files a finished run produced (best and last weights, last checkpoint), for summary.json: export
    ships only the weights whose digest the run recorded."""
    from medseg.digests import file_sha256

    files = {"best_weights_sha256": result.best_weights, "last_weights_sha256": result.last_weights,
             "last_checkpoint_sha256": out / "checkpoints" / "last.pt"}  # fmt: skip
    return {k: file_sha256(p) if p.is_file() else None for k, p in files.items()}


def yaml_text(config: dict[str, Any]) -> str:
    """The YAML of a recorded config, saying it is the run's config with its local paths replaced by references."""
    import yaml

    head = "# the run's config.yaml with data.manifest and init_weights as references (repository path or sha256)\n"
    return head + yaml.safe_dump(config, sort_keys=False)


def _previous_run(out: Path) -> dict[str, Any]:
    """run.json of the run folder being resumed (its MLflow run continues in that folder when the config is
    unchanged; its training segments carry over)."""
    try:
        return dict(json.loads((out / "run.json").read_text()))
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from medseg.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n", overwrite=True)


def run_info_dict(info: RunInfo) -> dict[str, Any]:
    d = asdict(info)
    d.pop("result", None)
    return d
