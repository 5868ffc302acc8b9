"""`medseg pacs status|retry|stop|serve`: status counts and reasons, operator retry, graceful stop, audit events."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pacs_helpers import Served, chaos_files, make_study, write_config

from medseg.pacs.queue import Backoff, JobQueue
from medseg.pacs.worker import STALL_ENV


def _medseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=120)


def _config(tmp_path: Path) -> Path:
    write_config(tmp_path / "pacs.yaml", tmp_path / "store", {"folder": str(tmp_path / "segs")})
    return tmp_path / "pacs.yaml"


def test_status_and_retry(tmp_path: Path) -> None:
    config = _config(tmp_path)
    q = JobQueue(tmp_path / "store" / "queue.db")
    for study in ("1.1", "1.2", "1.3"):
        q.record_instance(f"{study}.9", study, f"{study}.5", "/p", "h" + study, 1, 0.0, now=100.0)
    q.record_instance("1.4.9", "1.4", "1.4.5", "/p", "h4", 1, 1e12)
    q.complete_due(None, now=101.0)
    b = Backoff(max_attempts=1)
    q.fail(q.lease("w", 30), "association with dimse:PACS@host:104 not established (down or refused)", b)
    q.quarantine(q.lease("w", 30), "failed: not a CT series")
    report = _medseg("pacs", "status", "--config", str(config), "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    nonzero = {k: v for k, v in data["counts"].items() if v}
    assert nonzero == {"receiving": 1, "queued": 1, "failed": 1, "quarantined": 1}
    reasons = {j["state"]: j["reason"] for j in data["jobs"]}
    assert "not established" in reasons["failed"] and "not a CT" in reasons["quarantined"]
    assert data["service_pid"] is None
    text = _medseg("pacs", "status", "--config", str(config))
    assert "service not running" in text.stdout and "quarantined (attempts 1" in text.stdout
    assert _medseg("pacs", "retry", "--config", str(config)).returncode == 2
    assert _medseg("pacs", "retry", "3", "--config", str(config)).returncode == 2  # queued: nothing to retry
    done = _medseg("pacs", "retry", "--failed", "--config", str(config))
    assert done.returncode == 0 and "queued again: 1" in done.stdout
    assert q.job(1).state == "queued"
    assert _medseg("pacs", "stop", "--config", str(config)).returncode == 2  # nothing running


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "pacs.yaml").write_text("storage: s\ndestination: {ae_title: X}\n")
    done = _medseg("pacs", "status", "--config", str(tmp_path / "pacs.yaml"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "destination" in done.stderr and "pacs.example.yaml" in done.stderr


@pytest.mark.slow
def test_serve_then_graceful_stop_hands_back_the_running_job_and_audits(
    shared: Path, tmp_path: Path, _isolated_audit_dir: Path
) -> None:
    config = _config(tmp_path)
    files = chaos_files(shared)
    make_study(files, tmp_path / "study", range(len(files)), "stop")  # the whole study: inference outlasts the grace
    q = JobQueue(tmp_path / "store" / "queue.db")
    q.add_job("batch:stop", str(tmp_path / "study"))
    port = int(yaml.safe_load(config.read_text())["listen"]["port"])
    stall = {STALL_ENV: "after_inference"}  # the job outlives the grace on any host (a fast one once finished it)
    served = Served(config, port, tmp_path / "serve.log", env=stall, grace=0.1).start()
    deadline = time.monotonic() + 60
    while q.job(1).state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert q.job(1).state == "running"
    stopped = _medseg("pacs", "stop", "--config", str(config))
    assert stopped.returncode == 0, stopped.stderr
    served.proc.wait(30)
    assert served.proc.returncode == 0
    job = q.job(1)
    assert (job.state, job.attempts, job.lease_owner) == ("queued", 0, None)  # the job outlived the grace
    assert not (tmp_path / "store" / "serve.pid").exists()
    db = next(_isolated_audit_dir.glob("*.db"))
    commands = {r[0] for r in sqlite3.connect(db).execute("SELECT command FROM events")}
    assert {"pacs.serve", "pacs.job"} <= commands


def test_example_config_loads_and_documents_every_key() -> None:
    from medseg.pacs.config import PacsConfig, load_config

    example = Path(__file__).resolve().parents[1] / "configs" / "pacs.example.yaml"
    cfg = load_config(example)
    text = example.read_text()
    for name, field in PacsConfig.model_fields.items():
        assert f"{name}:" in text, name
        nested = getattr(field.annotation, "model_fields", {})
        for sub in nested:
            assert f"{sub}:" in text, f"{name}.{sub}"
    assert cfg.destination.name.startswith("dimse:")
