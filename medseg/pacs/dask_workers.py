"""Scale-out: leased jobs run as tasks on a Dask distributed cluster; the SQLite queue stays the source of truth.

The dispatcher leases a job and submits it with its fence; the task (on any worker process) loads the model once
per process, renews the lease while it runs, and commits through the fence. A worker that dies mid-task makes Dask
run the task again elsewhere with the same fence; the ledger makes a second send a no-op or an identical re-send.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
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


def dask_job(config_json: dict[str, Any], job_id: int, fence: int, owner: str) -> dict[str, Any]:
    """The task: run one leased job on this worker (skipped when the lease was taken over meanwhile). Dask runs a
    task again when its worker dies before the result reached the scheduler, even after the job was committed: that
    re-run reports the committed outcome instead of running the job twice.

    Returns the job's audit facts for the dispatcher's trail: {'job', 'state', 'reason', 'outputs' (paths written),
    'model' ([name, version, weights digest] or None), 'worker' (host:pid)}."""
    config = PacsConfig.model_validate(config_json)
    queue = JobQueue(config.queue_path)
    job = queue.job(job_id)
    if job is not None and job.fence == fence and job.state in ("sent", "quarantined"):
        return _facts(JobResult(job_id, job.state, "committed before its worker was lost; not run again"), None)
    if job is None or job.fence != fence or job.state != "running":
        return _facts(JobResult(job_id, "lost", "lease no longer held when the task started"), None)
    lease = Lease(job, owner, fence, job.lease_expires or 0.0)
    segmenter = _segmenter(config)
    result = run_job(config, queue, lease, segmenter)
    made_by = queue.seg_model(job_id)
    queue.close()
    return _facts(result, list(made_by) if made_by else [*segmenter.model_name, segmenter.weights_sha256])


def _facts(result: JobResult, model: list[str] | None) -> dict[str, Any]:
    """What `dask_job` returns (plain data, pickled back to the dispatcher)."""
    import socket

    return {"job": result.job_id, "state": result.state, "reason": result.reason, "outputs": list(result.outputs),
            "model": model, "worker": f"{socket.gethostname()}:{os.getpid()}"}  # fmt: skip


class SchedulerLost(Exception):
    """The Dask scheduler stopped answering (killed, network gone): the leases in flight were handed back."""


CONNECT_TIMEOUT_S = 10.0
RECONNECT_CAP_S = 30.0
DOWN_FILE = "dispatch-down.json"


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Any:
    """A distributed Client of the scheduler at `address`; SchedulerLost (one line) when it cannot be reached."""
    from distributed import Client

    logging.getLogger("distributed.client").setLevel(logging.CRITICAL)  # its tracebacks: we log one line
    try:
        return Client(address, timeout=timeout_s)
    except Exception as exc:  # OSError, TimeoutError, a refused handshake: all mean "not reachable now"
        raise SchedulerLost(f"cannot reach the Dask scheduler at {address}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (distributed's messages may span lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def mark_down(storage: Path, since: float, reason: str) -> None:
    """Record for `medseg pacs status` that dispatch is down since `since` and why (atomic replace)."""
    tmp = storage / f".{DOWN_FILE}.tmp"
    tmp.write_text(json.dumps({"down_since": since, "reason": reason}))
    os.replace(tmp, storage / DOWN_FILE)


def mark_up(storage: Path) -> None:
    """Dispatch runs again (or the service stopped): `pacs status` no longer reports it down."""
    (storage / DOWN_FILE).unlink(missing_ok=True)


def dispatch_down(storage: Path) -> dict[str, Any] | None:
    """{'down_since': epoch s, 'reason': ...} while the service's dispatch has lost its scheduler, else None."""
    try:
        state = json.loads((storage / DOWN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def dispatch(
    config: PacsConfig,
    queue: JobQueue,
    stop: threading.Event,
    on_event: Callable[[str], None],
    results: list[JobResult],
    until_empty: bool = False,
    client: Any = None,
    reconnect: bool = False,
) -> None:
    """Lease jobs as long as the cluster has free threads, submit them, collect results; returns on stop (or, with
    `until_empty`, when no job is open).

    When the scheduler is lost, the leases in flight go back to the queue (attempt not counted). With `reconnect`
    (the service) one line is logged, `pacs status` shows dispatch down, and the client reconnects with a growing
    back-off until the scheduler answers again; otherwise (a batch) SchedulerLost is raised."""
    address = str(config.scheduler)
    client = connect(address) if client is None else client
    if reconnect:
        mark_up(config.storage)
    try:
        while not stop.is_set():
            try:
                _dispatch_until_lost(config, queue, stop, on_event, results, until_empty, client)
                return
            except SchedulerLost as exc:
                if not reconnect:
                    raise
                _close(client)
                on_event(f"dispatch: {exc}; reconnecting (jobs wait in the queue)")
                mark_down(config.storage, time.time(), str(exc))
                client = _reconnect(address, stop)
                if client is not None:
                    mark_up(config.storage)
                    on_event(f"dispatch: reconnected to the Dask scheduler at {address}")
    finally:
        _close(client)


def _reconnect(address: str, stop: threading.Event) -> Any:
    """A new Client once the scheduler answers again, trying with a growing pause; None when stopped first."""
    pause = 1.0
    while not stop.wait(pause):
        try:
            return connect(address)
        except SchedulerLost:
            pause = min(RECONNECT_CAP_S, pause * 2)
    return None


def _close(client: Any) -> None:
    """Close a client whose scheduler may be gone, never raising."""
    if client is not None:
        with contextlib.suppress(Exception):
            client.close(timeout=5)


def _hand_back(queue: JobQueue, inflight: dict[Any, Lease]) -> list[int]:
    """Give back the leases in flight (attempt not counted): another dispatch runs them from the start."""
    handed = [lease.job.id for lease in inflight.values() if queue.release(lease.job.id, lease.fence)]
    inflight.clear()
    return handed


def _dispatch_until_lost(
    config: PacsConfig,
    queue: JobQueue,
    stop: threading.Event,
    on_event: Callable[[str], None],
    results: list[JobResult],
    until_empty: bool,
    client: Any,
) -> None:
    """`dispatch` on one connected client; SchedulerLost (leases in flight handed back) when it stops answering."""
    from medseg.pacs.service import owner_name

    inflight: dict[Any, Lease] = {}
    try:
        while not stop.is_set():
            _check_connected(client, str(config.scheduler))
            capacity = max(1, sum(client.nthreads().values()))
            while len(inflight) < capacity:
                lease = queue.lease(owner_name("dask"), config.lease_seconds, backoff=backoff_of(config))
                if lease is None:
                    break
                inflight[None] = lease  # handed back too if submit fails
                future = client.submit(
                    dask_job, config.model_dump(mode="json"), lease.job.id, lease.fence, lease.owner,
                    key=f"medseg-job-{lease.job.id}-{lease.fence}-{uuid.uuid4().hex}", pure=False,  # one per storage
                )  # fmt: skip
                inflight[future] = inflight.pop(None)
                on_event(f"job {lease.job.id}: submitted to the cluster (attempt {lease.job.attempts})")
            for future in [f for f in inflight if f.done()]:
                if future.status == "cancelled":  # the client lost its scheduler: not the job's failure
                    _check_connected(client, str(config.scheduler), force=True)
                lease = inflight.pop(future)
                try:
                    facts = future.result()
                except Exception as exc:  # the task failed on every worker it was tried on: the lease expires
                    facts = {"job": lease.job.id, "state": "error", "reason": f"{type(exc).__name__}: {exc}"}
                result = JobResult(facts["job"], facts["state"], facts["reason"], tuple(facts.get("outputs", ())))
                _audit(config, lease, result, facts)
                results.append(result)
                on_event(f"job {result.job_id}: {result.state}" + (f" ({result.reason})" if result.reason else ""))
            if until_empty and not inflight and queue.open_jobs() == 0:
                return
            time.sleep(0.2)
    except SchedulerLost as exc:
        handed = _hand_back(queue, inflight)
        raise SchedulerLost(f"{exc}; {_jobs(handed)} handed back") from exc
    except Exception as exc:
        if _is_queue_error(exc):
            raise
        handed = _hand_back(queue, inflight)
        raise SchedulerLost(f"lost the Dask scheduler at {config.scheduler} ({_one_line(exc)}); "
                            f"{_jobs(handed)} handed back") from exc  # fmt: skip


def _audit(config: PacsConfig, lease: Lease, result: JobResult, facts: dict[str, Any]) -> None:
    """Record a job the cluster ran in this host's audit trail (the worker's own record is in its trail)."""
    from medseg.pacs.audit import record_dask_job

    worker = str(facts.get("worker") or "unknown (the task failed on every worker)")
    record_dask_job(lease.job, config.destination.name, result, worker, facts.get("model"))


def _check_connected(client: Any, address: str, force: bool = False) -> None:
    """SchedulerLost when the client no longer has its scheduler (or `force`: a future was cancelled under it)."""
    if force or client.status != "running":
        raise SchedulerLost(f"lost the Dask scheduler at {address} (client {client.status})")


def _jobs(ids: list[int]) -> str:
    """'no running job', 'job 3', 'jobs 3, 4'."""
    if not ids:
        return "no running job"
    return ("job " if len(ids) == 1 else "jobs ") + ", ".join(map(str, ids))


def _is_queue_error(exc: BaseException) -> bool:
    """Whether `exc` is the queue's own failure or a medseg error (not the cluster's): it propagates as before."""
    import sqlite3

    from medseg.errors import MedsegError

    return isinstance(exc, (sqlite3.Error, MedsegError))
