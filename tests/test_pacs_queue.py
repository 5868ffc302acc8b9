"""The durable job queue: states, leases with expiry, fencing, backoff, supersession, and crash consistency."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.pacs.queue import Backoff, JobQueue, LeaseLost


def _receive(q: JobQueue, study: str, n: int, now: float, quiet: float = 10.0, tag: str = "a") -> None:
    for i in range(n):
        q.record_instance(f"1.2.{study}.{tag}{i}", study, f"{study}.1", f"/x/{i}", f"h{tag}{i}", 1, quiet, now=now)


def test_pragmas_are_wal_and_full(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.db")
    db = q._conn()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_study_completes_after_quiet_time_only(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.db")
    _receive(q, "9", 3, now=100.0)
    assert q.complete_due(None, now=105.0) == []
    assert q.next_deadline() == 110.0
    jobs = q.complete_due(lambda uid: f"/s/{uid}", now=110.0)
    assert [(j.study_uid, j.generation, j.state, j.input) for j in jobs] == [("9", 1, "queued", "/s/9")]
    assert q.complete_due(None, now=200.0) == []
    assert q.studies()[0]["instances"] == 3


def test_duplicate_instances_make_no_new_job(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.db")
    _receive(q, "9", 3, now=100.0)
    q.complete_due(None, now=111.0)
    _receive(q, "9", 3, now=120.0)  # same SOP UIDs, same bytes: the same study sent twice
    assert q.complete_due(None, now=500.0) == []
    assert len(q.jobs()) == 1


def test_late_instance_supersedes_open_job(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.db")
    _receive(q, "9", 2, now=100.0)
    first = q.complete_due(None, now=111.0)[0]
    _receive(q, "9", 1, now=120.0, tag="late")
    assert q.studies()[0]["state"] == "receiving"
    second = q.complete_due(None, now=131.0)[0]
    assert second.generation == 2
    assert q.job(first.id).state == "superseded"
    assert "generation 2" in q.job(first.id).reason


def test_a_running_job_overtaken_by_new_instances_is_superseded_not_sent(tmp_path: Path) -> None:
    """Found by the kill test on a faster host: a study completed early (its sender crashed and came back after the
    quiet time), its job started, the rest of the study arrived while it ran. That job's SEG would show the partial
    study beside the newer job's; the worker asks `supersede_if_stale` before sending."""
    q = JobQueue(tmp_path / "q.db")
    _receive(q, "9", 2, now=100.0)
    first = q.complete_due(None, now=111.0)[0]
    lease = q.lease("w1", 30, now=112.0)
    assert lease is not None and lease.job.id == first.id
    assert q.supersede_if_stale(lease) is None  # still the latest: goes on to send
    _receive(q, "9", 1, now=113.0, tag="late")  # arrives while it runs: running jobs are not superseded at once
    assert q.job(first.id).state == "running"
    assert q.supersede_if_stale(lease) == 2
    done = q.job(first.id)
    assert (done.state, done.lease_owner) == ("superseded", None) and "not sent" in done.reason
    with pytest.raises(LeaseLost):
        q.record_sent(lease, "dest", "k", "1.2.3")  # the fence holds: nothing can mark it sent now
    second = q.complete_due(None, now=124.0)[0]
    assert second.generation == 2 and q.lease("w1", 30, now=125.0).job.id == second.id


def test_fencing_stale_lease_cannot_commit(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.db")
    _receive(q, "9", 1, now=100.0)
    q.complete_due(None, now=111.0)
    old = q.lease("w1", 30, now=200.0)
    assert old is not None and q.lease("w2", 30, now=210.0) is None  # still held
    new = q.lease("w2", 30, now=231.0)  # expired: taken over
    assert new is not None and new.fence == old.fence + 1 and new.job.attempts == 2
    with pytest.raises(LeaseLost):
        q.record_sent(old, "dest", "k", "1.2.3")
    with pytest.raises(LeaseLost):
        q.renew(old, 30)
    q.record_sent(new, "dest", "k", "1.2.3")
    assert q.job(new.job.id).state == "sent"
    assert len(q.ledger()) == 1


def test_backoff_then_failed_then_bounded_rounds(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.db")
    b = Backoff(base_s=2, cap_s=5, max_attempts=3, failed_retry_after_s=100, max_rounds=1)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [2, 4, 5, 5]
    _receive(q, "9", 1, now=0.0)
    q.complete_due(None, now=11.0)
    now, states = 20.0, []
    for _ in range(3):
        lease = q.lease("w", 30, now=now)
        assert lease is not None
        states.append(q.fail(lease, "destination refused", b, now=now))
        assert q.lease("w", 30, now=now) is None  # not before its backoff
        now += 10
    assert states == ["pending", "pending", "failed"]
    assert q.job(1).reason == "destination refused"
    assert q.requeue_failed(b, now=now) == 0  # cool-down not over
    assert q.requeue_failed(b, now=now + 200) == 1
    lease = q.lease("w", 30, now=now + 200)
    for _ in range(3):
        q.fail(lease, "still down", b, now=now + 200)
        lease = q.lease("w", 30, now=now + 10_000) if q.job(1).state == "pending" else lease
    assert q.job(1).state == "failed"
    assert q.requeue_failed(b, now=now + 100_000) == 0  # max_rounds used: never a loop
    assert q.retry(failed=True) == [1] and q.job(1).state == "queued"


def test_hand_back_does_not_count_an_attempt(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.db")
    _receive(q, "9", 1, now=0.0)
    q.complete_due(None, now=11.0)
    lease = q.lease("w", 30, now=20.0)
    q.hand_back(lease)
    job = q.job(1)
    assert (job.state, job.attempts, job.lease_owner) == ("queued", 0, None)


def test_quarantine_does_not_block_others(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.db")
    _receive(q, "8", 1, now=0.0)
    _receive(q, "9", 1, now=0.0)
    q.complete_due(None, now=11.0)
    bad = q.lease("w", 30, now=20.0)
    q.quarantine(bad, "not CT")
    good = q.lease("w", 30, now=21.0)
    assert good is not None and good.job.id != bad.job.id
    assert q.job(bad.job.id).state == "quarantined"


ops = st.lists(
    st.tuples(st.sampled_from(["recv", "complete", "lease", "send", "fail", "stale_send", "tick"]), st.integers(0, 2)),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_random_histories_keep_the_invariants(tmp_path_factory: pytest.TempPathFactory, history: list) -> None:
    q = JobQueue(tmp_path_factory.mktemp("q") / "q.db")
    b = Backoff(base_s=1, cap_s=4, max_attempts=3, failed_retry_after_s=10, max_rounds=2)
    now, leases, stale, n = 0.0, [], [], 0
    for op, arg in history:
        study = str(arg)
        if op == "recv":
            n += 1
            q.record_instance(f"1.{study}.{n}", study, "s", "/p", f"h{n}", 1, 5, now=now)
        elif op == "complete":
            q.complete_due(None, now=now)
        elif op == "lease":
            lease = q.lease(f"w{arg}", 3, now=now)
            if lease:
                stale += [old for old in leases if old.job.id == lease.job.id]
                leases = [old for old in leases if old.job.id != lease.job.id] + [lease]
        elif op in ("send", "fail") and leases:
            lease = leases.pop(arg % len(leases))
            try:
                if op == "send":
                    q.record_sent(lease, "d", "k", f"sop{lease.job.id}")
                else:
                    q.fail(lease, "x", b, now=now)
            except LeaseLost:
                assert q.job(lease.job.id).fence != lease.fence or q.job(lease.job.id).state != "running"
        elif op == "stale_send" and stale:
            with pytest.raises(LeaseLost):
                q.record_sent(stale.pop(), "d", "k", "sop")
        else:
            now += 2.5
            q.requeue_failed(b, now=now)
    jobs = q.jobs()
    sent = {row["job_id"] for row in q.ledger()}
    assert sent == {j.id for j in jobs if j.state == "sent"}
    assert len(q.ledger()) == len(sent)
    assert all(j.state != "running" or j.lease_owner for j in jobs)
    for study in q.studies():
        open_jobs = [j for j in jobs if j.study_uid == study["study_uid"] and j.state in ("queued", "pending")]
        assert len(open_jobs) <= 1
    assert all(j.attempts <= b.max_attempts for j in jobs)


WRITER = """
import sys, time
from medseg.pacs.queue import JobQueue
q = JobQueue(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    i += 1
    q.record_instance(f"1.2.{i}", str(i % 7), "s", "/p", f"h{i}", 1, 0.0)
    if i % 5 == 0:
        q.complete_due()
    print(i, flush=True)
"""


def test_sigkill_during_writes_leaves_a_consistent_database(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        acknowledged = [line for line in proc.stdout.read().split() if line.isdigit()]
        proc.wait()
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n_instances = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        conn.close()
        assert acknowledged, "the writer acknowledged nothing before it was killed"
        assert n_instances >= int(acknowledged[-1])  # every acknowledged write survived the kill
    q = JobQueue(db)
    for study in q.studies():
        assert study["instances"] == len(q.instances(str(study["study_uid"])))


def test_leases_of_dead_local_processes_are_reclaimed_at_start(tmp_path: Path) -> None:
    import socket

    from medseg.pacs.service import reclaim_dead_leases

    q = JobQueue(tmp_path / "q.db")
    for study in ("7", "8"):
        _receive(q, study, 1, now=0.0)
    q.complete_due(None, now=11.0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    gone = q.lease(f"{host}:{int(dead.stdout)}:w0", 600)
    alive = q.lease(f"{host}:{os.getpid()}:w0", 600)
    assert reclaim_dead_leases(q) == {gone.job.id: "queued"}
    assert (q.job(gone.job.id).state, q.job(gone.job.id).attempts) == ("queued", 1)  # the crashed attempt counts
    assert q.job(alive.job.id).state == "running"


def test_a_job_whose_holder_dies_on_its_last_attempt_ends_failed_not_queued_again(tmp_path: Path) -> None:
    """A study that kills every worker (OOM, segfault) under a service restarted at once: a re-probe saw attempt 4 of
    max_attempts 2, 'running, orphaned', for ever."""
    import socket

    from medseg.pacs.service import reclaim_dead_leases

    q = JobQueue(tmp_path / "q.db")
    _receive(q, "9", 1, now=0.0)
    q.complete_due(None, now=11.0)
    backoff = Backoff(1.0, 2.0, max_attempts=2)
    host = socket.gethostname()
    for attempt in (1, 2):
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        lease = q.lease(f"{host}:{int(dead.stdout)}:w0", 600, backoff=backoff)
        assert lease is not None and q.job(lease.job.id).attempts == attempt
        expected = "queued" if attempt < 2 else "failed"
        assert reclaim_dead_leases(q, backoff) == {lease.job.id: expected}
    job = q.job(lease.job.id)
    assert job.state == "failed" and "last of 2 attempt(s) never finished: its holder on this host died" in job.reason
    assert q.lease(f"{host}:{os.getpid()}:w0", 600, backoff=backoff) is None
