"""Several writer processes appending at once neither corrupt nor fork the chain."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from medseg.audit.config import load_config
from medseg.audit.session import audit_session
from medseg.audit.store import AuditStore
from medseg.audit.verify import verify_store
from medseg.errors import AuditError, IntegrityError

WRITERS = 4
COMMANDS_PER_WRITER = 25  # x2 events (start + end) = 50 events per writer


def _writer(audit_dir: str, worker: int, barrier: Any) -> None:
    config = load_config(Path(audit_dir))
    barrier.wait(timeout=600)  # spawned interpreters start slowly on a loaded 2-core machine
    for i in range(COMMANDS_PER_WRITER):
        with audit_session("batch", {"worker": worker, "i": i}, software={"medseg": "test"}, config=config):
            time.sleep(0.005)  # the command's work: other writers get their turn at the lock


def test_concurrent_writers_keep_one_unbroken_chain(tmp_path: Path) -> None:
    audit_dir = tmp_path / "audit"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(str(audit_dir), w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    verified_while_writing = _verify_until_done(audit_dir, procs)
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    assert verified_while_writing > 0

    with AuditStore.open(load_config(audit_dir), create=False) as store:
        report = verify_store(store)
        records = list(store.records())
    total = WRITERS * COMMANDS_PER_WRITER * 2
    assert report.ok, report.problems
    assert not report.notes
    assert [r.seq for r in records] == list(range(1, total + 1))
    links = Counter(r.prev_hash for r in records)
    assert max(links.values()) == 1, "two records link to the same predecessor: the chain forked"
    per_worker = Counter((r.body["params"]["worker"], r.body["kind"]) for r in records)
    assert set(per_worker.values()) == {COMMANDS_PER_WRITER} and len(per_worker) == WRITERS * 2
    assert len({r.body["pid"] for r in records}) == WRITERS
    switches = sum(a.body["pid"] != b.body["pid"] for a, b in itertools.pairwise(records))
    assert switches > WRITERS, f"writers did not interleave ({switches} switches); the test proved nothing"


def _verify_until_done(audit_dir: Path, procs: list[Any]) -> int:
    """Run `verify` over and over while the writers append: a snapshot must never look tampered."""
    runs = 0
    deadline = time.monotonic() + 240
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        try:
            store = AuditStore.open(load_config(audit_dir), create=False)
        except AuditError:  # not created yet
            time.sleep(0.01)
            continue
        except IntegrityError as exc:  # created, not yet initialised: to a reader an empty store (review 20)
            assert "empty" in exc.message
            time.sleep(0.01)
            continue
        with store:
            report = verify_store(store)
        assert report.ok, report.problems
        runs += report.records > 0
    return runs


def _endless_writer(audit_dir: str, worker: int) -> None:
    config = load_config(Path(audit_dir))
    i = 0
    while True:
        with audit_session("batch", {"worker": worker, "i": i}, software={"medseg": "test"}, config=config):
            i += 1


def test_writer_killed_mid_append_leaves_a_verifiable_chain(tmp_path: Path) -> None:
    """kill -9 of a writer at an arbitrary point (possibly inside a transaction) loses at most its open command."""
    audit_dir = tmp_path / "audit"
    ctx = multiprocessing.get_context("spawn")
    victim = ctx.Process(target=_endless_writer, args=(str(audit_dir), 0))
    barrier = ctx.Barrier(1)
    survivor = ctx.Process(target=_writer, args=(str(audit_dir), 1, barrier))
    victim.start()
    deadline = time.monotonic() + 60
    while not (audit_dir / "audit.db").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    survivor.start()
    time.sleep(0.5)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=30)
    survivor.join(timeout=240)
    assert survivor.exitcode == 0

    with AuditStore.open(load_config(audit_dir), create=False) as store:
        report = verify_store(store)
        records = list(store.records())
    assert report.ok, report.problems
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert Counter(r.body["kind"] for r in records if r.body["params"]["worker"] == 1) == {
        "start": COMMANDS_PER_WRITER,
        "end": COMMANDS_PER_WRITER,
    }
    victim_kinds = Counter(r.body["kind"] for r in records if r.body["params"]["worker"] == 0)
    assert victim_kinds["start"] - victim_kinds["end"] in (0, 1) and victim_kinds["end"] > 0



def test_an_export_taken_while_a_command_appends_verifies(tmp_path: Path, monkeypatch) -> None:
    """Records, head and verification of an export come from one state. A command that appended right after the
    records were read once gave a snapshot whose head was not its last record: `verify-export` failed, a false
    tamper alarm on the auditors' copy. The append is made at that worst moment, by a real second writer."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from medseg.audit.export import build_snapshot, verify_snapshot

    config = load_config(tmp_path / "audit")
    for i in range(3):
        with audit_session("batch", {"i": i}, software={"medseg": "test"}, config=config):
            pass
    key = Ed25519PrivateKey.generate()
    with AuditStore.open(config, create=False) as store:
        read_records = store.records
        appended = []

        def records_then_a_concurrent_append(after_seq: int = 0):
            yield from read_records(after_seq)
            if not appended:
                with audit_session("batch", {"late": True}, software={"medseg": "test"}, config=config):
                    appended.append(True)

        monkeypatch.setattr(store, "records", records_then_a_concurrent_append)
        snapshot = build_snapshot(store, key, {"operator": "test"})
    check = verify_snapshot(snapshot, key.public_key())
    assert appended and check.ok, check.problems
    assert snapshot["head"]["seq"] == snapshot["records"][-1]["seq"] == 8
