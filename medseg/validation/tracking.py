"""One MLflow run per validation (mlflow imported lazily): tags to search by model and set, the locked set as a
dataset input with its digest, aggregates as metrics, and the report files (per-case table as CSV/JSON, not
`log_table`, which needs pandas) as artifacts.

Tracking URI: `--tracking-uri`, else `$MLFLOW_TRACKING_URI`, else a SQLite store `mlflow.db` next to the output
folder, so validations written side by side share one searchable store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from medseg.errors import InvalidInputError, ProcessingError
from medseg.signals import deferred_interrupt, process_alive

EXPERIMENT = "medseg-validation"
MLFLOW_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "sqlalchemy.engine")  # MLflow gives the last its own handler
MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs"})  # what any MLflow SQL store holds
HOST_TAG, PID_TAG = "medseg.host", "medseg.pid"  # which process owns a RUNNING run: `end_orphans`
FAST_FAIL = {  # while the store is checked: an unreachable server fails in seconds, not after minutes of retries
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def resolve_tracking_uri(explicit: str | None, out: Path) -> str:
    """Argument > $MLFLOW_TRACKING_URI > sqlite next to the output folder."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out.parent / 'mlflow.db').resolve()}"


def _client(uri: str, out: Path) -> tuple[Any, str]:
    """An MlflowClient for `uri` and the id of the validation experiment (created with a local artifact folder)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", module="mlflow")
    from mlflow.tracking import MlflowClient

    quiet_mlflow_logs()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return client, exp.experiment_id
    location = (out.parent / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:///") else None
    return client, client.create_experiment(EXPERIMENT, artifact_location=location)


def quiet_mlflow_logs() -> None:
    """MLflow's, alembic's and SQLAlchemy's loggers at CRITICAL, set after `import mlflow` (which sets its own logger
    to INFO with a plain-text handler on stderr): they printed "Creating initial MLflow database tables..." and, on a
    store that fails, a ~35-line traceback into stderr, which holds one line per error (and under --log-json only
    JSON lines); medseg reports the failure itself, and --debug prints its whole cause chain. A process whose root
    logger is at DEBUG (a developer's) keeps them. train/tracking.py holds the same function (train and validation
    may not import each other: tests/test_architecture.py)."""
    import mlflow  # noqa: F401  (configures its loggers on first import: levels set before it are lost)

    level = logging.DEBUG if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.CRITICAL
    for name in MLFLOW_LOGGERS:
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def fast_fail() -> Iterator[None]:
    """MLflow's HTTP retries and timeout set low (FAST_FAIL) within the block, the caller's values put back after."""
    saved = {k: os.environ.get(k) for k in FAST_FAIL}
    os.environ.update(FAST_FAIL)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// tracking URI (None for any other store)."""
    return Path("/" + unquote(urlparse(uri).path).lstrip("/")) if uri.startswith("sqlite:///") else None


def _check_artifact_root(client: Any, exp_id: str) -> None:
    """A local artifact folder of the experiment must be a folder this process can write (it is written last)."""
    location = client.get_experiment(exp_id).artifact_location or ""
    if not location.startswith("file:"):
        return
    folder = Path(unquote(urlparse(location).path))
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"artifact folder {folder} is not writable")


def refuse_foreign_sqlite(db: Path) -> None:
    """Refuse, before anything is written, a SQLite tracking store in the audit store's folder (UsageError, exit 2,
    as any output there) or an existing database with tables that is not an MLflow store (InvalidInputError,
    exit 3: the named database is the wrong input): MLflow would add its ~30 tables to the audit trail or to
    someone else's database. A missing or empty file, or a database without tables, may become a store."""
    from medseg.guard import refuse_audit_folder

    refuse_audit_folder(db)
    if not db.is_file() or db.stat().st_size == 0:
        return
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise InvalidInputError(f"not an MLflow tracking store: {exc}", path=db,
                                hint="Pass --tracking-uri a new sqlite file or an MLflow store.") from exc  # fmt: skip
    if tables and not tables >= MLFLOW_TABLES:
        raise InvalidInputError(
            f"not an MLflow tracking store (tables: {', '.join(sorted(tables)[:4])}): nothing written to it",
            path=db,
            hint="Pass --tracking-uri a new sqlite file or an MLflow store; no case was run.",
        )


def _require_openable(db: Path, uri: str, out: Path) -> None:
    """ProcessingError (exit 4) at once for a sqlite store path that is a folder or other non-file, or whose
    nearest existing folder this process cannot write: MLflow retries opening such a store for ~100 s (ten tries,
    doubling waits) before it fails."""
    problem = None
    if db.exists() and not db.is_file():
        problem = "it is not a file"
    elif not db.exists():
        parent = next((p for p in db.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            problem = f"{parent} cannot be written"
    if problem:
        raise ProcessingError(f"cannot open the MLflow store at {uri}: {problem}", path=out,
                              hint="Check --tracking-uri / MLFLOW_TRACKING_URI; no case was run.")  # fmt: skip


def open_store(tracking_uri: str | None, out: Path) -> str:
    """Open the tracking store before any case is segmented, and return its URI: the validation experiment is read
    or created, a tag written (a read-only store fails here) and a local artifact folder checked, with MLflow's
    HTTP retries off (`fast_fail`), so an unwritable store or a server that is down fails in seconds, not after the
    whole validation. A sqlite store this call created is removed again when it fails (a half-created database
    would break the next run). A sqlite file in the audit folder, or another application's database, is refused
    first (`refuse_foreign_sqlite`)."""
    uri = resolve_tracking_uri(tracking_uri, out)
    db = _sqlite_file(uri)
    if db is not None:
        refuse_foreign_sqlite(db)
        _require_openable(db, uri, out)
    created = db is not None and not db.exists()
    try:
        with fast_fail(), deferred_interrupt():
            client, exp_id = _client(uri, out)
            client.set_experiment_tag(exp_id, "medseg.store_checked_at", str(int(time.time())))
            _check_artifact_root(client, exp_id)
    except Exception as exc:
        if created and db is not None:
            for leftover in (db, db.with_name(db.name + "-journal"), db.with_name(db.name + "-wal")):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        raise ProcessingError(f"cannot open the MLflow store at {uri}: {exc}".splitlines()[0][:300], path=out,
                              hint="Check --tracking-uri / MLFLOW_TRACKING_URI; no case was run.") from exc  # fmt: skip
    return uri


def start_run(report: dict[str, Any], out: Path, tracking_uri: str | None) -> dict[str, str]:
    """Create the run with its tags, params and dataset input; returns {run_id, tracking_uri, experiment}. A run
    created but not filled is marked FAILED."""
    uri = resolve_tracking_uri(tracking_uri, out)
    run_id = None
    try:
        from mlflow.entities import Param

        with deferred_interrupt():
            client, exp_id = _client(uri, out)
            end_orphans(client, exp_id)
            model, ts = report["model"], report["set"]
            run_name = f"{model['name']}-{model['version']}@{ts['name']}"
            owner = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
            run_id = client.create_run(exp_id, run_name=run_name, tags=_tags(report) | owner).info.run_id
            _log_dataset(client, run_id, ts)
            params = [Param(k, str(v)[:500]) for k, v in _params(report).items()]
            client.log_batch(run_id, metrics=_metrics(report), params=params)
    except Exception as exc:
        if run_id is not None:
            fail_run({"run_id": run_id, "tracking_uri": uri}, out)
        raise ProcessingError(f"cannot log the validation to MLflow at {uri}: {exc}".splitlines()[0],
                              hint="Check --tracking-uri / MLFLOW_TRACKING_URI.") from exc  # fmt: skip
    return {"run_id": run_id, "tracking_uri": uri, "experiment": EXPERIMENT}


def end_orphans(client: Any, exp_id: str) -> list[str]:
    """Mark FAILED the validation runs this host left RUNNING whose process is gone (a validate killed with SIGKILL
    or a power cut between creating its run and ending it), tagged `medseg.ended_by`; returns their ids. A run of
    another host, or whose process still lives, is left alone."""
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'"
    ended = []
    for run in client.search_runs([exp_id], filter_string=query, max_results=1000):
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, "FAILED")
            client.set_tag(run.info.run_id, "medseg.ended_by", f"a later validate: process {pid} was gone")
            ended.append(run.info.run_id)
    return ended


def fail_run(info: dict[str, str], out: Path) -> None:
    """Mark the run FAILED (best effort, retries off): a validation that did not finish leaves no RUNNING run."""
    try:
        with fast_fail(), deferred_interrupt():
            client, _ = _client(info["tracking_uri"], out)
            client.set_terminated(info["run_id"], "FAILED")
    except Exception:  # the store is what failed; the validation's own error is the one to report
        logging.getLogger(__name__).warning("could not mark MLflow run %s FAILED", info["run_id"])


def _tags(report: dict[str, Any]) -> dict[str, str]:
    """Tags that make validation runs searchable by model, set and verdict."""
    model, ts = report["model"], report["set"]
    return {
        "medseg.kind": "validation",
        "model": model["name"],
        "model_version": model["version"],
        "model_sha256": model["weights_sha256"],
        "set": ts["name"],
        "set_digest": ts["set_digest"],
        "acceptance_version": report["acceptance_file"]["version"],
        "verdict": report["acceptance"]["verdict"],
    }


def _params(report: dict[str, Any]) -> dict[str, Any]:
    """The settings that produced the numbers."""
    boot, env = report["bootstrap"], report["environment"]
    return {
        "acceptance_file_sha256": report["acceptance_file"]["sha256"],
        "bootstrap_seed": boot["seed"],
        "bootstrap_resamples": boot["resamples"],
        "cases": report["set"]["cases"],
        "nsd_tolerance_mm": report["nsd_tolerance_mm"],
        "runtime_backend": report["model"]["runtime"]["backend"],
        "medseg": env["medseg"],
        "python": env["python"],
    } | {f"lib.{k}": v for k, v in env["libraries"].items()}


def _metrics(report: dict[str, Any]) -> list[Any]:
    """Aggregates (mean, CI, min, max of every metric) and the main per-case metrics."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = [Metric(f"{metric}.{stat}", float(agg[stat]), now, 0) for metric, agg in report["aggregates"].items()
           for stat in ("mean", "ci_low", "ci_high", "minimum", "maximum")]  # fmt: skip
    for case in report["cases"]:
        for organ, m in case["metrics"].items():
            out += [Metric(f"case.{case['case_id']}.{organ}.{k}", float(m[k]), now, 0)
                    for k in ("dice", "hd95_mm", "nsd", "volume_diff_pct")]  # fmt: skip
    return out


def _log_dataset(client: Any, run_id: str, ts: dict[str, Any]) -> None:
    """The locked set as an MLflow dataset input whose digest is the set digest."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=ts["name"], digest=ts["set_digest"][:36], source_type="medseg-locked-set",
                      source=f'{{"set": "{ts["name"]}", "set_digest": "{ts["set_digest"]}"}}')  # fmt: skip
    tags = [InputTag("mlflow.data.context", "test"), InputTag("set_digest", ts["set_digest"])]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])


def finish_run(info: dict[str, str], out: Path, verdict: str, files: Path | None = None) -> None:
    """Log every file of the validation folder (`files`, default `out`) as an artifact and end the run; on an error
    the run is marked FAILED."""
    try:
        with deferred_interrupt():
            client, _ = _client(info["tracking_uri"], out)
            client.log_artifacts(info["run_id"], str(files or out), artifact_path="validation")
            client.set_tag(info["run_id"], "verdict", verdict)
            client.set_terminated(info["run_id"], "FINISHED")
    except Exception as exc:
        fail_run(info, out)
        raise ProcessingError(f"cannot log the validation files to MLflow: {exc}".splitlines()[0]) from exc
