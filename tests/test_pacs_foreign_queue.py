"""A queue.db that is another application's SQLite database is refused by every `medseg pacs` command and left
byte-for-byte unchanged (nineteenth re-probe: read-only commands added the service's tables to it)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.errors import ProcessingError
from medseg.pacs.queue import JobQueue
from tests.pacs_helpers import write_config


def foreign_db(path: Path) -> str:
    """An SQLite file with one unrelated table and a row; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE patients (id TEXT, name TEXT)")
        db.execute("INSERT INTO patients VALUES ('1', 'x')")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_queue_refuses_another_applications_database(tmp_path: Path) -> None:
    before = foreign_db(tmp_path / "queue.db")
    with pytest.raises(ProcessingError, match="not a medseg job queue"):
        JobQueue(tmp_path / "queue.db")
    assert hashlib.sha256((tmp_path / "queue.db").read_bytes()).hexdigest() == before
    assert not (tmp_path / "queue.db-wal").exists()


def test_an_empty_file_and_an_existing_queue_still_open(tmp_path: Path) -> None:
    (tmp_path / "a.db").touch()
    JobQueue(tmp_path / "a.db").close()
    JobQueue(tmp_path / "b.db").close()
    q = JobQueue(tmp_path / "b.db")
    assert q.open_jobs() == 0
    q.close()


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["purge", "--dry-run"]])
def test_read_only_pacs_commands_refuse_it_in_one_line(tmp_path: Path, command: list[str]) -> None:
    storage = tmp_path / "storage"
    before = foreign_db(storage / "queue.db")
    write_config(tmp_path / "svc.yaml", storage, {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
                 retention={"keep_days": 30})
    env_audit = {"MEDSEG_AUDIT_DIR": str(tmp_path / "audit")}
    run = subprocess.run([sys.executable, "-m", "medseg", "pacs", *command, "--config", str(tmp_path / "svc.yaml")],
                         capture_output=True, text=True, env={**os.environ, **env_audit}, timeout=120)  # fmt: skip
    assert run.returncode == 4, run.stderr
    assert "not a medseg job queue" in run.stderr and "Traceback" not in run.stderr
    assert hashlib.sha256((storage / "queue.db").read_bytes()).hexdigest() == before
    with sqlite3.connect(storage / "queue.db") as db:
        assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")} == {"patients"}
