"""Attach the audit events of an MLflow run to that run as a JSON artifact (mlflow imported only when called)."""

from __future__ import annotations

import json

from medseg.audit.config import AuditConfig, load_config
from medseg.audit.query import RecordFilter, query_records
from medseg.audit.store import AuditStore
from medseg.errors import AuditError
from medseg.signals import deferred_interrupt

ARTIFACT = "audit/events.json"


def run_events_json(store: AuditStore, run_id: str) -> str:
    """All records of the commands linked to `run_id` (their start events too), as a JSON document."""
    linked = query_records(store, RecordFilter(mlflow_run_id=run_id))
    invocations = sorted({str(r.body.get("invocation")) for r in linked})
    records = sorted(
        {r.seq: r for inv in invocations for r in query_records(store, RecordFilter(invocation=inv))}.values(),
        key=lambda r: r.seq,
    )
    document = {"store_id": store.store_id, "mlflow_run_id": run_id, "records": [r.to_json() for r in records]}
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False)


def attach_events_to_mlflow(store: AuditStore, run_id: str, tracking_uri: str | None = None) -> None:
    """Log the run's events as the artifact `audit/events.json` (replaced on each call, so it ends complete)."""
    try:
        from mlflow.tracking import MlflowClient

        document = run_events_json(store, run_id)
        with deferred_interrupt():
            MlflowClient(tracking_uri=tracking_uri).log_text(run_id, document, ARTIFACT)
    except Exception as exc:
        raise AuditError(f"cannot attach audit events to MLflow run {run_id}: {exc}") from exc


def attach_run_events(run_id: str, tracking_uri: str | None = None, config: AuditConfig | None = None) -> None:
    """For training code: open the configured store and attach the events of `run_id` to the run."""
    with AuditStore.open(config or load_config()) as store:
        attach_events_to_mlflow(store, run_id, tracking_uri)
