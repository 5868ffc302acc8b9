"""Scale-out: leased jobs run as tasks on a Dask distributed cluster; the SQLite queue stays the source of truth.

The dispatcher leases a job and submits it with its fence; the task (on any worker process) loads the model once
per process, renews the lease while it runs, and commits through the fence. A worker that dies mid-task makes Dask
run the task again elsewhere with the same fence; the ledger makes a second send a no-op or an identical re-send.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from medseg.pacs.config import PacsConfig
from medseg.pacs.queue import JobQueue, Lease
from medseg.pacs.segment import Segmenter, load_segmenter
from medseg.pacs.worker import JobResult, backoff_of, run_job

_SEGMENTERS: dict[tuple[Any, ...], Segmenter] = {}
_LOCK = threading.Lock()


def _segmenter(config: PacsConfig) -> Segmenter:
    """This worker process's model, loaded on first use."""
    key = (tuple(config.organs), config.model, config.backend, config.strict)
    with _LOCK:
        if key not in _SEGMENTERS:
            _SEGMENTERS[key] = load_segmenter(*key)
        return _SEGMENTERS[key]


def dask_job(config_json: dict[str, Any], job_id: int, fence: int, owner: str) -> tuple[int, str, str | None]:
    """The task: run one leased job on this worker (skipped when the lease was taken over meanwhile). Dask runs a
    task again when its worker dies before the result reached the scheduler, even after the job was committed: that
    re-run reports the committed outcome instead of running the job twice."""
    config = PacsConfig.model_validate(config_json)
    queue = JobQueue(config.queue_path)
    job = queue.job(job_id)
    if job is not None and job.fence == fence and job.state in ("sent", "quarantined"):
        return job_id, job.state, "committed before its worker was lost; not run again"
    if job is None or job.fence != fence or job.state != "running":
        return job_id, "lost", "lease no longer held when the task started"
    lease = Lease(job, owner, fence, job.lease_expires or 0.0)
    result = run_job(config, queue, lease, _segmenter(config))
    queue.close()
    return result.job_id, result.state, result.reason


def dispatch(
    config: PacsConfig,
    queue: JobQueue,
    stop: threading.Event,
    on_event: Callable[[str], None],
    results: list[JobResult],
    until_empty: bool = False,
) -> None:
    """Lease jobs as long as the cluster has free threads, submit them, collect results; returns on stop."""
    from distributed import Client

    from medseg.pacs.service import owner_name

    client = Client(config.scheduler, timeout=30)
    inflight: dict[Any, Lease] = {}
    try:
        while not stop.is_set():
            capacity = max(1, sum(client.nthreads().values()))
            while len(inflight) < capacity:
                lease = queue.lease(owner_name("dask"), config.lease_seconds, backoff=backoff_of(config))
                if lease is None:
                    break
                future = client.submit(
                    dask_job, config.model_dump(mode="json"), lease.job.id, lease.fence, lease.owner,
                    key=f"medseg-job-{lease.job.id}-{lease.fence}", pure=False,
                )  # fmt: skip
                inflight[future] = lease
                on_event(f"job {lease.job.id}: submitted to the cluster (attempt {lease.job.attempts})")
            for future in [f for f in inflight if f.done()]:
                lease = inflight.pop(future)
                try:
                    job_id, state, reason = future.result()
                except Exception as exc:  # the task failed on every worker it was tried on: the lease expires
                    job_id, state, reason = lease.job.id, "error", f"{type(exc).__name__}: {exc}"
                results.append(JobResult(job_id, state, reason))
                on_event(f"job {job_id}: {state}" + (f" ({reason})" if reason else ""))
            if until_empty and not inflight and queue.open_jobs() == 0:
                return
            time.sleep(0.2)
    finally:
        client.close()
