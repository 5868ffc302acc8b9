"""One MLflow run per validation (mlflow imported lazily): tags to search by model and set, the locked set as a
dataset input with its digest, aggregates as metrics, and the report files (per-case table as CSV/JSON, not
`log_table`, which needs pandas) as artifacts.

Tracking URI: `--tracking-uri`, else `$MLFLOW_TRACKING_URI`, else a SQLite store `mlflow.db` next to the output
folder, so validations written side by side share one searchable store.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from medseg.errors import ProcessingError
from medseg.signals import deferred_interrupt

EXPERIMENT = "medseg-validation"


def resolve_tracking_uri(explicit: str | None, out: Path) -> str:
    """Argument > $MLFLOW_TRACKING_URI > sqlite next to the output folder."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out.parent / 'mlflow.db').resolve()}"


def _client(uri: str, out: Path) -> tuple[Any, str]:
    """An MlflowClient for `uri` and the id of the validation experiment (created with a local artifact folder)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", module="mlflow")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return client, exp.experiment_id
    location = (out.parent / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:///") else None
    return client, client.create_experiment(EXPERIMENT, artifact_location=location)


def start_run(report: dict[str, Any], out: Path, tracking_uri: str | None) -> dict[str, str]:
    """Create the run with its tags, params and dataset input; returns {run_id, tracking_uri, experiment}."""
    uri = resolve_tracking_uri(tracking_uri, out)
    try:
        from mlflow.entities import Param

        with deferred_interrupt():
            client, exp_id = _client(uri, out)
            model, ts = report["model"], report["set"]
            run_name = f"{model['name']}-{model['version']}@{ts['name']}"
            run_id = client.create_run(exp_id, run_name=run_name, tags=_tags(report)).info.run_id
            _log_dataset(client, run_id, ts)
            params = [Param(k, str(v)[:500]) for k, v in _params(report).items()]
            client.log_batch(run_id, metrics=_metrics(report), params=params)
    except ProcessingError:
        raise
    except Exception as exc:
        raise ProcessingError(f"cannot log the validation to MLflow at {uri}: {exc}".splitlines()[0],
                              hint="Check --tracking-uri / MLFLOW_TRACKING_URI.") from exc  # fmt: skip
    return {"run_id": run_id, "tracking_uri": uri, "experiment": EXPERIMENT}


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


def finish_run(info: dict[str, str], out: Path, verdict: str) -> None:
    """Log every file of the validation folder as an artifact and end the run."""
    try:
        with deferred_interrupt():
            client, _ = _client(info["tracking_uri"], out)
            client.log_artifacts(info["run_id"], str(out), artifact_path="validation")
            client.set_tag(info["run_id"], "verdict", verdict)
            client.set_terminated(info["run_id"], "FINISHED")
    except Exception as exc:
        raise ProcessingError(f"cannot log the validation files to MLflow: {exc}".splitlines()[0]) from exc
