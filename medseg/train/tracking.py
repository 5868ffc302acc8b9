"""MLflow logging for training runs (mlflow imported lazily): params, per-step metrics, manifests as datasets
with their digests, git commit, package versions, and the final model as an artifact.

Tracking URI: explicit argument, else `MLFLOW_TRACKING_URI`, else a sqlite store inside the run folder (never a
stray `mlflow.db` or `./mlruns` in the working directory). For a sqlite store, an experiment created here keeps
its artifacts in `mlartifacts/` beside the database (the run folder for the default store), never in the folder
of whichever run happened to create it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from medseg.errors import ProcessingError
from medseg.signals import deferred_interrupt

PACKAGES = ("medseg", "torch", "monai", "numpy", "scipy", "nibabel", "SimpleITK", "pydantic", "mlflow-skinny")
REPO = Path(__file__).resolve().parents[2]


def resolve_tracking_uri(explicit: str | None, run_dir: Path) -> str:
    """The tracking URI to use: argument > $MLFLOW_TRACKING_URI > sqlite in the run folder."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


# What makes a training run: its code, configs, data manifests and the pinned environment.
DIRTY_PATHS = ("medseg", "configs", "data_manifests", "requirements.lock", "pyproject.toml")


def git_commit(repo: Path | None = None) -> dict[str, str]:
    """Commit of the code that trains (and whether the tree had uncommitted changes in DIRTY_PATHS) in `repo`, by
    default this repository."""
    repo = repo or REPO
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", *DIRTY_PATHS],
                               capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown"}
    return {"git_commit": head.stdout.strip() or "unknown", "git_dirty": str(bool(dirty.stdout.strip())).lower()}


def mark_failed(uri: str, run_id: str) -> str:
    """Mark a run that was killed (still RUNNING in its store) FAILED; returns one line saying what happened (a
    store that cannot be reached is a note, not an error: the new run does not depend on it)."""
    try:
        from mlflow.tracking import MlflowClient

        _quiet_mlflow_logs()
        with deferred_interrupt():
            client = MlflowClient(uri)
            if client.get_run(run_id).info.status != "RUNNING":
                return f"MLflow run {run_id} of the killed run was already ended"
            client.set_terminated(run_id, "FAILED")
    except Exception as exc:  # the store of a dead run; its failure must not block the new one
        return f"MLflow run {run_id} of the killed run not marked FAILED: {exc}".splitlines()[0]
    return f"MLflow run {run_id} of the killed run marked FAILED"


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def _quiet_mlflow_logs() -> None:
    """MLflow's, alembic's and SQLAlchemy's loggers at CRITICAL (a root logger at DEBUG keeps them), set after
    `import mlflow` (which sets its own to INFO with a plain-text stderr handler): they printed "Creating initial
    MLflow database tables..." and a failing store's ~35-line traceback into stderr, which under --log-json must
    hold only JSON lines. The same function as medseg.validation.tracking.quiet_mlflow_logs (train may not import
    medseg.validation; tests/test_validation_review21.py checks they agree)."""
    import mlflow  # noqa: F401  (configures its loggers on first import: levels set before it are lost)

    level = logging.DEBUG if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.CRITICAL
    for name in ("mlflow", "alembic", "sqlalchemy", "sqlalchemy.engine"):  # MLflow gives the last its own handler
        logging.getLogger(name).setLevel(level)


@contextmanager
def _writing() -> Iterator[Any]:
    """The mlflow module, with Ctrl-C held until the block's writes have committed (`medseg.signals`): every write
    of a Tracker goes through here."""
    import mlflow

    _quiet_mlflow_logs()
    with deferred_interrupt():
        yield mlflow


class Tracker:
    """One MLflow run. Methods are no-ops on non-zero DDP ranks (`enabled=False`). The run names its experiment
    explicitly and `end` puts back the caller's tracking URI, so a run in a notebook or test leaves no
    MLFLOW_EXPERIMENT_ID / MLFLOW_TRACKING_URI behind to send the caller's next run into this store."""

    def __init__(self, run_dir: Path, tracking_uri: str | None, experiment: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        self.uri = resolve_tracking_uri(tracking_uri, run_dir)
        self.run_dir = run_dir
        self.experiment = experiment
        self._previous_uri: str | None = None

    def start(self, run_name: str, resume_run_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        warnings.filterwarnings("ignore", module="mlflow")
        self._previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            with _writing() as mlflow:
                mlflow.set_tracking_uri(self.uri)
                if mlflow.get_experiment_by_name(self.experiment) is None:
                    location = None
                    if self.uri.startswith("sqlite:///"):
                        location = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
                    mlflow.create_experiment(self.experiment, artifact_location=location)
                experiment_id = None if resume_run_id else mlflow.get_experiment_by_name(self.experiment).experiment_id
                run = mlflow.start_run(run_id=resume_run_id, experiment_id=experiment_id,
                                       run_name=None if resume_run_id else run_name)  # fmt: skip
        except Exception as exc:
            self._put_back_uri()
            raise ProcessingError(f"cannot start MLflow run at {self.uri}: {exc}".splitlines()[0],
                                  hint="Check --tracking-uri / MLFLOW_TRACKING_URI.") from exc  # fmt: skip
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            items = list(_flatten(params).items())
            with _writing() as mlflow:
                for i in range(0, len(items), 90):
                    mlflow.log_params(dict(items[i : i + 90]))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.enabled:
            with _writing() as mlflow:
                mlflow.set_tags(dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.enabled:
            with _writing() as mlflow:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)

    def log_manifest(self, path: Path, digest: str, name: str, context: str, reference: str) -> None:
        """The manifest as an MLflow dataset whose digest is the manifest file's SHA-256; its source is `reference`
        (a path in the repository or a bare file name, never an absolute path) and `path` is logged as artifact."""
        if not self.enabled:
            return
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        source = CodeDatasetSource({"manifest": reference, "sha256": digest})
        with _writing() as mlflow:
            mlflow.log_input(MetaDataset(source, name=name, digest=digest[:36]), context=context,
                             tags={"sha256": digest})  # fmt: skip
            mlflow.log_artifact(str(path), artifact_path="manifests")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            with _writing() as mlflow:
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=artifact_path)
                else:
                    mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """`text` as the artifact `artifact_file` (a record made for MLflow, not a file of the run folder)."""
        if self.enabled:
            with _writing() as mlflow:
                mlflow.log_text(text, artifact_file)

    def _put_back_uri(self) -> None:
        """Give the process back the caller's tracking URI (mlflow.set_tracking_uri also sets the environment)."""
        import mlflow

        mlflow.set_tracking_uri(self._previous_uri)
        if self._previous_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            with _writing() as mlflow:
                mlflow.end_run(status=status)
                mlflow.set_tracking_uri(self._previous_uri)
