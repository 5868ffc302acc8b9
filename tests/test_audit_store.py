"""The audit store and the `audited` context: events written, chained, append-only, outcomes mapped."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from medseg.audit.canonical import GENESIS_HASH, chain_hash
from medseg.audit.config import load_config
from medseg.audit.store import AuditStore
from medseg.cli.audited import audited
from medseg.errors import InvalidInputError, QCRejectedError


def _bodies(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY seq")]


def test_audited_writes_start_and_end_with_digests(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with audited("convert", {"series": None, "overwrite": False}) as rec:
        rec.add_inputs([shared / "deid" / "deid_data"])
        out.write_text("result")
        rec.add_outputs([out])
        rec.set_model("liver", "1.0.0", "a" * 64)
    bodies = _bodies(load_config().db_path)
    assert [b["kind"] for b in bodies] == ["start", "end"]
    start, end = bodies
    assert end["invocation"] == start["invocation"]
    assert end["outcome"] == "success" and end["exit_code"] == 0 and end["duration_ms"] >= 0
    assert end["operator"] == "test-operator" and end["os_user"]
    assert end["inputs"][0]["type"] == "folder" and end["inputs"][0]["files"] > 1
    assert end["outputs"][0]["sha256"] == _sha(out)
    assert end["model"] == {"name": "liver", "version": "1.0.0", "sha256": "a" * 64}
    assert start["prev_hash"] == GENESIS_HASH and end["prev_hash"] == chain_hash(GENESIS_HASH, start)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("exc", "outcome", "code"),
    [
        (InvalidInputError("bad"), "failure", 3),
        (QCRejectedError("qc"), "qc_rejected", 5),
        (RuntimeError("boom"), "failure", 4),
        (KeyboardInterrupt(), "interrupted", 130),
    ],
)
def test_failures_are_recorded_and_reraised(exc: BaseException, outcome: str, code: int) -> None:
    with pytest.raises(type(exc)), audited("infer", {"organ": "liver"}):
        raise exc
    end = _bodies(load_config().db_path)[-1]
    assert (end["outcome"], end["exit_code"], end["error_type"]) == (outcome, code, type(exc).__name__)


def test_events_are_append_only() -> None:
    with audited("convert", {}):
        pass
    with sqlite3.connect(load_config().db_path) as conn:
        for statement in ("UPDATE events SET command = 'x'", "DELETE FROM events", "DELETE FROM chain_head"):
            with pytest.raises(sqlite3.DatabaseError, match="medseg audit"):
                conn.execute(statement)
        with pytest.raises(sqlite3.DatabaseError, match="medseg audit"):
            conn.execute("UPDATE chain_head SET seq = 1")


def test_store_reopens_and_continues_the_chain() -> None:
    for _ in range(2):
        with audited("convert", {}):
            pass
    with AuditStore.open(load_config()) as store:
        records = list(store.records())
        assert [r.seq for r in records] == [1, 2, 3, 4]
        assert store.head().hash == records[-1].hash
        assert all(r.recomputed_hash() == r.hash for r in records)


def test_unreadable_and_missing_inputs_are_recorded_not_fatal(tmp_path: Path) -> None:
    with audited("convert", {}) as rec:
        rec.add_inputs([tmp_path / "missing.dcm", tmp_path])
    end = _bodies(load_config().db_path)[-1]
    assert [i["type"] for i in end["inputs"]] == ["missing", "folder"]
    assert end["inputs"][0]["sha256"] is None and end["inputs"][1]["files"] == 0


def test_store_files_are_owner_only() -> None:
    with audited("convert", {}):
        keep = sqlite3.connect(load_config().db_path)
        keep.execute("SELECT 1 FROM events").fetchone()
        folder = load_config().audit_dir
        modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    keep.close()
    assert modes == {"audit.db": 0o600, "audit.db-wal": 0o600, "audit.db-shm": 0o600, "chain-anchor.log": 0o600}


@pytest.mark.parametrize("fails", [False, True])
def test_inputs_hashed_in_the_background_are_recorded_like_the_others(shared: Path, tmp_path: Path, fails) -> None:
    """`add_inputs(background=True)` (what `medseg infer` uses): the same digests, in the order added, in the end
    event, also when the command fails while the hashing runs."""
    folder, file = shared / "deid" / "deid_data", tmp_path / "model.pt"
    file.write_bytes(b"weights" * 1000)
    with audited("convert", {}) as rec:
        rec.add_inputs([folder, file])
    expected = _bodies(load_config().db_path)[-1]["inputs"]
    with pytest.raises(InvalidInputError) if fails else contextlib.nullcontext(), audited("convert", {}) as rec:
        rec.add_inputs([folder], background=True)
        rec.add_inputs([tmp_path / "missing.dcm"])
        rec.add_inputs([file], background=True)
        if fails:
            raise InvalidInputError("bad")
    end = _bodies(load_config().db_path)[-1]
    assert end["outcome"] == ("failure" if fails else "success")
    assert [i["type"] for i in end["inputs"]] == ["folder", "missing", "file"]
    assert end["inputs"][0] == expected[0] and end["inputs"][2] == expected[1]
