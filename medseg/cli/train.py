"""`medseg train CONFIG`: train a segmentation model from a config and a data manifest (single process or torchrun)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medseg.audit.digest import PathDigest, path_ref
from medseg.cli.state import console

if TYPE_CHECKING:
    from medseg.cli.audited import AuditRecorder

EXAMPLES = """
Examples:

  medseg train configs/liver.yaml --out runs/liver-v1

  medseg train configs/liver.yaml --out runs/liver-v1 --resume runs/liver-v1/checkpoints/last.pt

  medseg train configs/liver_ci.yaml --out /tmp/ci-run --tracking-uri sqlite:////tmp/mlflow.db

  torchrun --nproc_per_node 2 -m medseg train configs/liver.yaml --out runs/ddp --device cuda

  python -m medseg.train.manifest data_manifests/liver_v1.sources.yaml data_manifests/liver_v1.json

Ctrl-C or SIGTERM saves a resumable checkpoint (checkpoints/last.pt) before exiting (exit 130).
--out must be a new or empty folder unless --resume continues the run in it (exit 2 otherwise).
"""


class _Reporter:
    """Turns training events into console lines (every `every` iterations when not on a terminal)."""

    def __init__(self, advance: Any, every: int = 10) -> None:
        self.advance, self.every = advance, every
        self.dice: float | None = None
        self.t0 = time.monotonic()

    def __call__(self, kind: str, f: dict[str, Any]) -> None:
        if kind == "iter":
            fields = {"loss": f["loss"], "s/it": f["s_per_it"]}
            if self.dice is not None:
                fields["val"] = self.dice
            self.advance(1, **fields)
            if f["iteration"] % self.every == 0:
                console.info(
                    f"it {f['iteration']}: loss {f['loss']:.4f} lr {f['lr']:.2e} {f['s_per_it']:.2f} s/it "
                    f"(data {f['data_s']:.2f} s) elapsed {f['elapsed_s'] / 60:.1f} min",
                    **{k: v for k, v in f.items() if k != "iteration"}, iteration=f["iteration"],
                )  # fmt: skip
        elif kind == "val":
            self.dice = f["val_score"]
            cases = ", ".join(f"{c['case']} {c['dice']:.3f}" for c in f["cases"])
            mark = " (best)" if f["improved"] else ""
            console.info(f"validation at it {f['iteration']}: score {f['val_score']:.4f}{mark} [{cases}]")
        elif kind == "checkpoint":
            console.info(f"checkpoint ({f['reason']}) at it {f['iteration']}: {f['path']}")
        elif kind in ("stage", "resume"):
            console.info(f.get("message") or f"resumed at it {f['iteration']} from {f['checkpoint']}")


def record_manifest_as_loaded(rec: AuditRecorder, manifest: Path, sha256: str, copy: Path) -> None:
    """Record the manifest as an input with the digest taken when training loaded it (`RunInfo.manifest_sha256`),
    not of the file as it is at the end: an edit during the run must not put the edited manifest in the trail. Its
    size is the run's copy's (manifest.json in the run folder) when that copy has the loaded digest."""
    from medseg.audit.digest import describe_path

    described = describe_path(copy, rec.path_key)
    size = described.bytes if described.sha256 == sha256 else 0
    rec.input_paths.append(manifest)
    rec.inputs.append(PathDigest(path_ref(manifest, rec.path_key), "file", sha256, 1, size).to_json())


def register(app: typer.Typer) -> None:
    """Add the `train` subcommand to the app."""

    @app.command("train", epilog=EXAMPLES)
    def train(
        config: Path = typer.Argument(..., help="Training config (YAML), e.g. configs/liver.yaml."),
        out: Path = typer.Option(
            Path("runs/train"), "--out", "-o",
            help="Run folder: new or empty, unless --resume continues it (checkpoints, MLflow store).",
        ),
        resume: Path | None = typer.Option(None, "--resume", help="Checkpoint to resume from (checkpoints/last.pt)."),
        tracking_uri: str | None = typer.Option(
            None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in --out)."
        ),
        data_root: Path | None = typer.Option(
            None,
            "--data-root",
            help="Root the manifest paths are relative to (default: $MEDSEG_DATA_ROOT or ../shared/data).",
        ),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, or auto."),
    ) -> None:
        """Train a model; the best checkpoint by validation Dice is kept as best_weights.pt in the run folder."""
        from medseg.cli.audited import audited
        from medseg.train.runner import run_training

        is_main = int(os.environ.get("RANK", "0")) == 0
        if not is_main:
            console.quiet = True
        params = {"config": config, "out": out, "resume": resume, "device": device,  # paths: keyed in the record
                  "world_size": int(os.environ.get("WORLD_SIZE", "1"))}  # fmt: skip
        if not is_main:
            run_training(config, out, resume, tracking_uri, data_root, device)
            return
        with audited("train", params=params) as rec, console.progress("training") as advance:
            rec.add_inputs([config])
            info = run_training(config, out, resume, tracking_uri, data_root, device, _Reporter(advance))
            record_manifest_as_loaded(rec, info.manifest_path, info.manifest_sha256, out / "manifest.json")
            if info.mlflow_run_id:
                rec.link_mlflow_run(info.mlflow_run_id, info.tracking_uri)
            assert info.result is not None
            run_dir = out.resolve()  # export finds the record whatever spelling of the folder it is given
            rec.add_outputs([info.result.best_weights.resolve(),
                             *(run_dir / name for name in ("summary.json", "metrics.jsonl", "run.json"))])
        p = info.result.progress
        console.result(
            f"{out}: {p.iteration} iterations in {p.elapsed_s / 60:.1f} min (stopped by {info.result.stopped_by}); "
            f"best validation score {p.best_score:.4f} at it {p.best_iteration}; weights {info.result.best_weights}; "
            f"MLflow run {info.mlflow_run_id} at {info.tracking_uri}"
        )
