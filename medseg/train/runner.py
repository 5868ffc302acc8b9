"""`run_training`: config + manifest -> verified data -> training loop -> MLflow record and run summary."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.digests import default_data_root
from medseg.errors import InvalidInputError
from medseg.train.config import TrainConfig, load_config
from medseg.train.distributed import init_distributed
from medseg.train.loop import Event, TrainResult, build_valset, train
from medseg.train.manifest import REPO, load_manifest, verify_manifest
from medseg.train.synth.prepare import default_cache_dir
from medseg.train.tracking import Tracker, git_commit, package_versions


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


def run_training(config_path: Path, out: Path, resume: Path | None = None, tracking_uri: str | None = None,
                 data_root: Path | None = None, device: str = "auto",
                 on_event: Event = lambda kind, fields: None) -> RunInfo:  # fmt: skip
    """Train the model described by `config_path` into the run folder `out` (see `medseg train --help`)."""
    cfg, cfg_sha = load_config(config_path)
    manifest_path = resolve_manifest(cfg, config_path)
    manifest, man_sha = load_manifest(manifest_path)
    root = data_root or default_data_root()
    on_event("stage", {"message": f"verifying {len(manifest.entries)} manifest entries (SHA-256)"})
    verify_manifest(manifest, root, manifest_path)
    dist = init_distributed(device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config_path, out / "config.yaml")
        shutil.copyfile(manifest_path, out / "manifest.json")
    on_event("stage", {"message": "preparing label maps and real CTs (cached after the first run)"})
    cache = default_cache_dir()
    from medseg.train.data import load_cases

    train_cases = load_cases(manifest, "train", cfg, root, cache)
    val_cases = load_cases(manifest, "val", cfg, root, cache)
    val = build_valset(val_cases, cfg) if dist.is_main else build_valset(type(val_cases)([], []), cfg)
    on_event("stage", {"message": f"{len(train_cases.anatomy)} label maps + {len(train_cases.real)} real CTs for "
                                  f"training, {len(val.names)} validation volumes"})  # fmt: skip
    tracker = Tracker(out, tracking_uri, experiment=f"medseg-{cfg.organ}", enabled=dist.is_main)
    previous = _previous_run(out) if resume else {}
    same_config = previous.get("config_sha256") == cfg_sha and previous.get("tracking_uri") == tracker.uri
    run_id = tracker.start(f"{cfg.name}-{cfg.version}", previous.get("mlflow_run_id") if same_config else None)
    if dist.is_main:
        _write_json(out / "run.json", {"mlflow_run_id": run_id, "tracking_uri": tracker.uri, "config_sha256": cfg_sha})
        if not same_config:
            tracker.log_params({"config": cfg.model_dump(mode="json"), "world_size": dist.world, "device": dist.device})
        tags = {**git_commit(), **{f"pkg.{k}": v for k, v in package_versions().items()},
                "config_sha256": cfg_sha, "manifest_sha256": man_sha}  # fmt: skip
        if previous.get("mlflow_run_id") and not same_config:
            tags["resumed_from_run"] = previous["mlflow_run_id"]
        tracker.set_tags(tags)
        tracker.log_manifest(manifest_path, man_sha, manifest.name, "training")
        tracker.log_artifact(config_path, "config")
    status = "FAILED"
    try:
        result = train(cfg, cfg_sha, man_sha, train_cases, val, out, dist, tracker, resume, on_event)
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
        summary = {"iterations": result.progress.iteration, "elapsed_s": result.progress.elapsed_s,
                   "best_score": result.progress.best_score, "best_iteration": result.progress.best_iteration,
                   "stopped_by": result.stopped_by, "config_sha256": cfg_sha, "manifest_sha256": man_sha,
                   "manifest": manifest_path.name, **git_commit()}  # fmt: skip
        _write_json(out / "summary.json", summary)
        tracker.log_metrics({"best_val_score": result.progress.best_score}, result.progress.iteration)
        tracker.log_artifact(result.best_weights, "model")
        tracker.log_artifact(out / "summary.json", "model")
        tracker.end("FINISHED")
    dist.close()
    return RunInfo(out, cfg_sha, manifest_path, man_sha, run_id, tracker.uri, result, dist.is_main)


def _previous_run(out: Path) -> dict[str, Any]:
    """run.json of the run folder being resumed (its MLflow run continues when the config is unchanged)."""
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
