"""`medseg train` end to end on the CI config: MLflow record, resume, Ctrl-C checkpoint, DDP (gloo), export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from medseg.errors import ProcessingError
from medseg.models.registry import resolve_model, sha256_file
from medseg.train.export import export_model
from medseg.train.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MEDSEG_CACHE_DIR=str(tmp / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _train(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 480) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "medseg"), "train", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    env = {**_env(tmp), "MEDSEG_AUDIT_DIR": str(tmp / "audit")}
    r = _train([str(REPO / "configs/liver_ci.yaml"), "--out", str(tmp / "run")], cwd=tmp, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp


def test_run_writes_weights_summary_and_mlflow_record(ci_run: Path) -> None:
    run = ci_run / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 6 and summary["stopped_by"] == "max_iterations"
    assert (run / "best_weights.pt").is_file() and (run / "checkpoints/last.pt").is_file()
    assert not (ci_run / "mlflow.db").exists() and not (ci_run / "mlruns").exists()
    _, man_sha = load_manifest(REPO / "data_manifests/liver_ci.json")
    assert summary["manifest_sha256"] == man_sha
    db = sqlite3.connect(run / "mlflow.db")
    steps = db.execute("select step from metrics where key='val_score' order by step").fetchall()
    assert [s for (s,) in steps] == [3, 6]
    digests = [d for (d,) in db.execute("select digest from datasets")]
    assert digests == [man_sha[:36]]
    tags = dict(db.execute("select key, value from tags").fetchall())
    assert tags["manifest_sha256"] == man_sha and len(tags["git_commit"]) >= 7 and "pkg.torch" in tags
    assert len(list((run / "mlartifacts").rglob("best_weights.pt"))) == 1


def test_resume_continues_from_the_checkpoint(ci_run: Path) -> None:
    cfg = yaml.safe_load((REPO / "configs/liver_ci.yaml").read_text())
    cfg["run"]["max_iterations"] = 8
    cfg["data"]["manifest"] = str(REPO / "data_manifests/liver_ci.json")
    path = ci_run / "longer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _train([str(path), "--out", str(ci_run / "run"), "--resume", str(ci_run / "run/checkpoints/last.pt")],
               cwd=ci_run, env={**_env(ci_run), "MEDSEG_AUDIT_DIR": str(ci_run / "audit")})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at it 6" in r.stderr
    assert json.loads((ci_run / "run/summary.json").read_text())["iterations"] == 8
    db = sqlite3.connect(ci_run / "run/mlflow.db")
    first = db.execute("select run_uuid from runs order by start_time").fetchone()[0]
    resumed = db.execute("select value from tags where key='resumed_from_run'").fetchall()
    assert resumed == [(first,)], "a changed config continues in a new MLflow run that names the old one"


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "configs/liver_ci.yaml").read_text())
    cfg["run"].update(max_iterations=100000, val_every=100000)
    cfg["data"]["manifest"] = str(REPO / "data_manifests/liver_ci.json")
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # pytest-xdist workers ignore SIGINT and children inherit that; a terminal's Ctrl-C reaches a default handler
    proc = subprocess.Popen([str(BIN / "medseg"), "train", str(path), "--out", str(tmp_path / "run")], cwd=tmp_path,
                            env=_env(tmp_path), stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 400
    for line in proc.stderr:
        if line.startswith("it 10:") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    import torch

    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["progress"]["iteration"] >= 10


def test_ddp_two_processes_on_cpu_with_gloo(tmp_path: Path) -> None:
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517", "-m", "medseg", "train",
           str(REPO / "configs/liver_ci.yaml"), "--out", str(tmp_path / "ddp"), "--device", "cpu"]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=480)
    assert r.returncode == 0, r.stderr[-3000:]
    db = sqlite3.connect(tmp_path / "ddp/mlflow.db")
    assert db.execute("select count(*) from runs").fetchone()[0] == 1
    assert db.execute("select value from params where key='world_size'").fetchone()[0] == "2"
    assert json.loads((tmp_path / "ddp/summary.json").read_text())["iterations"] == 6


def test_exported_model_loads_and_refuses_tampered_weights(ci_run: Path, tmp_path: Path) -> None:
    card = export_model(ci_run / "run", tmp_path / "model", {"note": "ci"})
    model = resolve_model(tmp_path / "model")
    assert model.card == card and card.training["manifest"]["name"] == "liver_ci"
    model.load_network()
    with (tmp_path / "model/weights.pt").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ProcessingError, match="does not match"):
        resolve_model(tmp_path / "model").load_network()


def test_export_points_at_the_training_audit_record_and_refuses_a_run_changed_after_it(
    ci_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.audit.config import load_config
    from medseg.audit.store import AuditStore
    from medseg.errors import InvalidInputError
    from medseg.train.export import NOT_AUDITED

    monkeypatch.setenv("MEDSEG_AUDIT_DIR", str(ci_run / "audit"))
    card = export_model(ci_run / "run", tmp_path / "model", {})
    pointer = card.training["audit_record"]
    with AuditStore.open(load_config(), create=False) as store:
        record = next(r for r in store.records() if r.seq == pointer["seq"])
        assert pointer == {"store_id": store.store_id, "seq": record.seq, "hash": record.hash}
    assert record.body["command"] == "train" and record.body["kind"] == "end"
    run = ci_run / "run"
    summary, weights = (run / "summary.json").read_bytes(), (run / "best_weights.pt").read_bytes()
    try:  # both files swapped together, so the run's own digests agree: only the audit record can tell
        other = {k: v * 0 if v.is_floating_point() else v for k, v in torch.load(run / "best_weights.pt").items()}
        torch.save(other, run / "best_weights.pt")
        edited = json.loads(summary) | {"best_weights_sha256": sha256_file(run / "best_weights.pt")}
        (run / "summary.json").write_text(json.dumps(edited))
        changed = f"summary.json is not the file the audit trail recorded .*{record.seq}"
        with pytest.raises(InvalidInputError, match=changed):
            export_model(run, tmp_path / "swapped", {})
        assert not (tmp_path / "swapped/weights.pt").exists()
    finally:
        (run / "summary.json").write_bytes(summary)
        (run / "best_weights.pt").write_bytes(weights)
    shutil.copytree(run, tmp_path / "moved")
    assert export_model(tmp_path / "moved", tmp_path / "m2", {}).training["audit_record"] == NOT_AUDITED
