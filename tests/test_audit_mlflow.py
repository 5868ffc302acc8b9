"""Audit events of a command linked to an MLflow run are attached to that run as `audit/events.json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.audit.config import load_config
from medseg.audit.mlflow_link import ARTIFACT
from medseg.audit.store import AuditStore
from medseg.cli.audited import audited
from medseg.errors import AuditError


def test_linked_run_gets_its_events(tmp_path: Path, monkeypatch) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service import utils

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(utils, "_tracking_uri", None)  # MLflow's process-wide URI: put back as it was after the test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # an earlier in-process test in this worker may have left its experiment active: name this store's own one
    experiment = MlflowClient(uri).create_experiment("audit-link")
    with audited("convert", {}):
        pass  # an unrelated command: must not be attached
    with mlflow.start_run(experiment_id=experiment) as run, audited("train", {"epochs": 1}) as rec:
        rec.link_mlflow_run(run.info.run_id, tracking_uri=uri)
    path = MlflowClient(uri).download_artifacts(run.info.run_id, ARTIFACT, str(tmp_path))
    document = json.loads(Path(path).read_text())
    records = document["records"]
    assert document["mlflow_run_id"] == run.info.run_id
    assert [(r["command"], r["kind"]) for r in records] == [("train", "start"), ("train", "end")]
    assert records[1]["mlflow_run_id"] == run.info.run_id and records[1]["outcome"] == "success"
    assert records[1]["prev_hash"] == records[0]["hash"]

    out = tmp_path / "model.pt"
    with pytest.raises(AuditError, match="MLflow run"), audited("train", {}) as rec:
        out.write_bytes(b"weights")
        rec.add_outputs([out])
        rec.link_mlflow_run("0" * 32)  # no such run: attaching fails after the local end event was written
    assert out.exists()
    with AuditStore.open(load_config(), create=False) as store:
        last = list(store.records())[-1].body
    assert (last["command"], last["kind"], last["outcome"]) == ("train", "end", "success")
