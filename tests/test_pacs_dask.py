"""`medseg batch`, locally and on a 2-worker Dask LocalCluster where a worker is SIGKILLed mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pydicom
import pytest
from pacs_helpers import chaos_files, make_study

from medseg.pacs.batch import batch_config, enqueue
from medseg.pacs.worker import JobResult

pytestmark = pytest.mark.slow


def test_batch_cli_segments_each_study_once_and_a_rerun_adds_nothing(shared: Path, tmp_path: Path) -> None:
    studies = tmp_path / "in"
    uid, _ = make_study(chaos_files(shared), studies / "a", range(28, 52), "batch-a")
    cmd = [sys.executable, "-m", "medseg", "batch", str(studies), "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "1 sent" in first.stdout
    segs = list((tmp_path / "out" / "seg").rglob("*.dcm"))
    assert len(segs) == 1 and pydicom.dcmread(segs[0]).StudyInstanceUID == uid
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("1 sent, 0 quarantined, 0 failed of 1 studies")
    assert list((tmp_path / "out" / "seg").rglob("*.dcm")) == segs


def test_dask_worker_killed_mid_job_still_one_completion(shared: Path, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    from medseg.pacs.dask_workers import dispatch

    src = chaos_files(shared)
    uids = {make_study(src, tmp_path / "in" / name, ks, name)[0] for name, ks in (("a", range(28, 52)),
                                                                                   ("b", range(30, 50)))}  # fmt: skip
    # distributed's nannies set OMP/MKL threads and PYTHONHASHSEED in this process's environment: put it back after
    with mock.patch.dict(os.environ), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                   dashboard_address=None) as cluster:  # fmt: skip
        client = Client(cluster)
        config = batch_config(tmp_path / "out", "liver", None, "auto", cluster.scheduler_address)
        queue = enqueue(config, tmp_path / "in")
        results: list[JobResult] = []
        stop = threading.Event()
        runner = threading.Thread(target=dispatch, args=(config, queue, stop, lambda _m: None, results, True))
        runner.start()
        pids = client.run(os.getpid)
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            busy = {w: keys for w, keys in client.processing().items() if keys}
            if busy and all(j.state == "running" for j in queue.jobs()):
                victim = next(iter(busy))
            time.sleep(0.2)
        assert victim is not None, "no job started on the cluster"
        time.sleep(0.3)  # inside the job (model loading or inference)
        assert "running" in [j.state for j in queue.jobs()]
        os.kill(pids[victim], signal.SIGKILL)
        runner.join(300)
        stop.set()
        assert not runner.is_alive()
        assert set(client.run(os.getpid).values()) != set(pids.values())  # the killed worker was replaced
        client.close()
    jobs = queue.jobs()
    assert [j.state for j in jobs] == ["sent", "sent"], [(j.state, j.reason) for j in jobs]
    assert all(j.attempts == 1 for j in jobs)  # the re-run went on under the same lease and fence
    ledger = queue.ledger()
    assert sorted(r["job_id"] for r in ledger) == [j.id for j in jobs]
    assert sorted(r.state for r in results) == ["sent", "sent"]
    segs = list((tmp_path / "out" / "seg").rglob("*.dcm"))
    assert {pydicom.dcmread(p).StudyInstanceUID for p in segs} == uids and len(segs) == 2


def test_a_rerun_of_a_committed_job_reports_its_outcome_and_runs_nothing(tmp_path: Path) -> None:
    """Dask re-runs a task whose worker died before the scheduler had its result, also after the job committed: the
    re-run reports the committed state (here 'sent') without segmenting or sending again; another fence is 'lost'."""
    from medseg.pacs.dask_workers import dask_job
    from medseg.pacs.queue import JobQueue

    config = batch_config(tmp_path / "out", "liver", None, "auto", None)
    queue = JobQueue(config.queue_path)
    job = queue.add_job("batch:a", str(tmp_path / "nowhere"))
    lease = queue.lease("w1", 600, job_id=job.id)
    assert lease is not None
    queue.record_sent(lease, "folder", "key", "1.2.3")
    payload = config.model_dump(mode="json")
    rerun = dask_job(payload, job.id, lease.fence, "w2")
    assert (rerun["job"], rerun["state"], rerun["reason"], rerun["outputs"]) == (
        job.id, "sent", "committed before its worker was lost; not run again", [])  # fmt: skip
    assert dask_job(payload, job.id, lease.fence + 1, "w2")["state"] == "lost"
    assert len(queue.ledger()) == 1 and queue.job(job.id).state == "sent"
