"""`medseg pacs serve`: the listener, the completion scheduler and the workers (threads here, or a Dask cluster).

The queue is the source of truth; a worker thread or Dask task only carries one leased job. A graceful stop
(SIGTERM, `medseg pacs stop`) stops the listener, lets running jobs finish within `grace_s`, and hands back the
leases of the rest so another start picks them up at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import MedsegError, UsageError
from medseg.pacs.config import PacsConfig
from medseg.pacs.queue import Backoff, JobQueue, QueueGone
from medseg.pacs.scp import Receiver
from medseg.pacs.segment import Segmenter, fallback_warning, load_segmenter, served_model
from medseg.pacs.storage import study_dir, sweep_unfinished_writes
from medseg.pacs.worker import JobResult, backoff_of, fail_unexpected, run_job
from medseg.signals import process_alive

PID_FILE = "serve.pid"


def owner_name(tag: str) -> str:
    """A lease owner: host, process and a tag (worker thread or Dask task)."""
    return f"{socket.gethostname()}:{os.getpid()}:{tag}"


def complete_studies(config: PacsConfig, queue: JobQueue) -> list[int]:
    """Turn studies past their quiet time into jobs (audited), audit studies stored that hold no image input (no job;
    once per instance count), and give failed jobs past their cool-down a new round."""
    from medseg.pacs.audit import record_not_input, record_study

    jobs = queue.complete_due(lambda uid: str(study_dir(config.storage, uid)))
    for job in jobs:
        n = len(queue.instances(job.study_uid))
        record_study(job.study_uid, job.generation, n, Path(job.input), job.id)
    for uid, generation, n in queue.unaudited_not_input(config.completion.quiet_seconds):
        record_not_input(uid, generation, n, study_dir(config.storage, uid))
        queue.mark_audited(uid, n)
    queue.requeue_failed(backoff_of(config))
    return [j.id for j in jobs]


@dataclass
class Service:
    """One running service; `run()` blocks until `stop` is set."""

    config: PacsConfig
    on_event: Callable[[str], None] = lambda _message: None
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[JobResult] = field(default_factory=list)
    port: int | None = None
    failure: MedsegError | None = None

    def __post_init__(self) -> None:
        self.queue = JobQueue(self.config.queue_path)

    def run(self, grace_s: float = 30.0) -> bool:
        """Listen, complete studies, run jobs; on stop, finish or hand back running jobs.

        Returns True when every thread ended within the grace time; False when a job was handed back while its
        thread was still inside inference (the caller should then end the process without waiting for it).
        """
        with service_lock(self.config.storage):
            finished = self._run(grace_s)
        if self.failure is not None:
            raise self.failure
        return finished

    def _run(self, grace_s: float) -> bool:
        """`run` with the storage's service lock held."""
        for job_id, state in reclaim_dead_leases(self.queue, backoff_of(self.config)).items():
            self.on_event(reclaimed_event(job_id, state))
        swept = sweep_unfinished_writes(self.config.storage)
        if swept:
            self.on_event(f"removed {len(swept)} temporary file(s) of instance writes cut short")
        receiver = Receiver(self.config, self.queue, self.on_event)
        segmenter = client = None
        if self.config.scheduler:
            served_model(self.config.organs, self.config.model)  # the workers load the model: refuse bad organs here
            client = _connect_scheduler(self.config.scheduler)
        else:
            segmenter = load_segmenter(self.config.organs, self.config.model, self.config.backend, self.config.strict)
            warning = fallback_warning(segmenter)
            if warning:
                self.on_event(warning)
        try:
            self.port = _listen(receiver, self.config)
        except BaseException:
            if client is not None:
                client.close()
            raise
        self.on_event(f"listening as {self.config.listen.ae_title} on {self.config.listen.host}:{self.port}")
        threads = [threading.Thread(target=self._schedule, name="scheduler", daemon=True)]
        if segmenter is not None:
            threads += [
                threading.Thread(target=self._work, args=(f"w{n}", segmenter), name=f"worker-{n}", daemon=True)
                for n in range(self.config.workers)
            ]
        else:
            threads.append(threading.Thread(target=self._dispatch, args=(client,), name="dask", daemon=True))
        for t in threads:
            t.start()
        try:
            wait_in_main_thread(self.stop)
        finally:
            receiver.stop()
            deadline = time.monotonic() + grace_s
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if self.failure is None:
                self._hand_back_own()
            if self.config.scheduler:
                from medseg.pacs.dask_workers import mark_up

                mark_up(self.config.storage)
            self.on_event("stopped")
        return not any(t.is_alive() for t in threads)

    def _schedule(self) -> None:
        next_purge = time.monotonic()
        while not self.stop.wait(self.config.completion.check_interval_s):
            if not self._queue_file_intact():
                return
            try:
                for job_id in complete_studies(self.config, self.queue):
                    self.on_event(f"study complete: job {job_id} queued")
                if self.config.retention.keep_days is not None and time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self.config.retention.check_interval_s
                    self._purge()
            except Exception as exc:  # a busy or full disk: the deadlines are kept, try again next tick
                self.on_event(f"scheduler: {type(exc).__name__}: {exc}")

    def _queue_file_intact(self) -> bool:
        """Whether queue.db is still the file the service opened; if not (deleted or replaced under it), log one
        line and stop the service with that error (exit 4): acknowledging studies into a database nobody reads
        again would lose them silently (review 19)."""
        try:
            self.queue.check_file()
        except QueueGone as exc:
            self.on_event(f"stopping: {exc.one_line()}")
            self.failure = exc
            self.stop.set()
            return False
        return True

    def _purge(self) -> None:
        """Retention's pass (audited when it deleted anything)."""
        from medseg.pacs.audit import record_purge
        from medseg.pacs.retention import purge_expired

        purged = purge_expired(self.config, self.queue)
        if purged:
            record_purge(purged, self.config.retention.keep_days)
            self.on_event(f"retention: deleted the files of {len(purged)} stud(y/ies)")

    def _work(self, tag: str, segmenter: Segmenter) -> None:
        owner = owner_name(tag)
        while not self.stop.is_set():
            try:
                lease = self.queue.lease(owner, self.config.lease_seconds, backoff=backoff_of(self.config))
            except Exception as exc:
                self.on_event(f"{tag}: cannot lease: {type(exc).__name__}: {exc}")
                lease = None
            if lease is None:
                self.stop.wait(0.5)
                continue
            self.on_event(f"job {lease.job.id}: running (attempt {lease.job.attempts})")
            try:
                result = run_job(self.config, self.queue, lease, segmenter)
            except Exception as exc:  # an unexpected fault outside the job's own handling: a failed attempt too
                try:
                    result = fail_unexpected(self.config, self.queue, lease, exc)
                except Exception as again:  # the queue itself failing: the lease expires, lease() bounds the attempts
                    result = JobResult(lease.job.id, "error", f"{type(exc).__name__}: {exc}; then {again}")
            self.results.append(result)
            self.on_event(f"job {result.job_id}: {result.state}" + (f" ({result.reason})" if result.reason else ""))

    def _dispatch(self, client: object) -> None:
        """Run jobs on the Dask cluster until stopped. A lost scheduler is handled inside `dispatch` (leases handed
        back, reconnect); anything else that ends it (the queue failing, a scheduler that refuses us) is logged in
        one line, shown by `pacs status`, and dispatch starts again after a growing pause: the thread never dies
        while the listener keeps acknowledging studies (review 19)."""
        from medseg.pacs.dask_workers import RECONNECT_CAP_S, dispatch, mark_down

        pause = 1.0
        while not self.stop.is_set():
            try:
                dispatch(self.config, self.queue, self.stop, self.on_event, self.results, client=client,
                         reconnect=True)  # fmt: skip
                return
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                self.on_event(f"dispatch: {reason}; trying again in {pause:.0f} s (jobs wait in the queue)")
                mark_down(self.config.storage, time.time(), reason)
                client = None
                self.stop.wait(pause)
                pause = min(RECONNECT_CAP_S, pause * 2)

    def _hand_back_own(self) -> None:
        """Leases of this process still held after the grace time go back to the queue."""
        prefix = owner_name("")
        for job in self.queue.jobs("running"):
            if job.lease_owner and job.lease_owner.startswith(prefix):
                self.queue.release(job.id, job.fence)


def wait_in_main_thread(event: threading.Event, poll_s: float = 0.25) -> None:
    """Block until `event` is set, waking every `poll_s` so that Python signal handlers run.

    A plain `event.wait()` blocks the main thread in one lock acquisition; when the kernel delivers SIGTERM to another
    thread (an inference or network thread), CPython only flags the handler and the main thread never wakes to run it,
    so the service ignored the stop (seen in CI: no exit 120 s after SIGTERM)."""
    while not event.wait(poll_s):
        pass


def reclaim_dead_leases(queue: JobQueue, backoff: Backoff | None = None) -> dict[int, str]:
    """Running jobs leased by a process of this host that no longer exists are taken back now, not at expiry:
    queued again, or 'failed' when that was their last allowed attempt (with `backoff`). {job id: new state}."""
    from medseg.pacs.status import orphans

    states = {job_id: queue.release(job_id, fence, True, backoff) for job_id, fence in orphans(queue).items()}
    return {job_id: state for job_id, state in states.items() if state}


def reclaimed_event(job_id: int, state: str) -> str:
    """The service log line for a job taken back from a dead holder."""
    if state == "failed":
        return f"job {job_id}: its holder on this host is gone after its last allowed attempt; failed"
    return f"job {job_id}: its holder on this host is gone; queued again"


def _connect_scheduler(address: str) -> object:
    """A Client of the configured Dask scheduler, connected before the listener starts: a scheduler that is not
    running (a typo, a cluster not up) is a config error naming `scheduler` (exit 2), not a service that
    acknowledges studies and never segments them (review 19)."""
    from medseg.pacs.dask_workers import SchedulerLost, connect

    try:
        return connect(address)
    except SchedulerLost as exc:
        raise UsageError(f"scheduler: {exc}", hint="Start the Dask scheduler first, or correct `scheduler` in the "
                         "config (tcp://HOST:PORT).") from exc  # fmt: skip


def _listen(receiver: Receiver, config: PacsConfig) -> int:
    """Start the receiver; a port another program holds (or one this user may not bind) is a config error (exit 2)
    naming the key, not an internal error: a second service on the same port used to end 'report it' (review 18)."""
    listen = config.listen
    try:
        return receiver.start()
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        raise UsageError(f"listen.port: cannot listen on {listen.host}:{listen.port}: {exc.strerror}",
                         hint="Another program (or service) holds the port: stop it or choose another listen.port "
                         "(listen.host must be an address of this host).") from exc  # fmt: skip


@contextlib.contextmanager
def service_lock(storage: Path) -> Iterator[int]:
    """Hold STORAGE/serve.pid locked (flock, exclusive) with this process's pid in it, for the service's lifetime.

    The lock, not the pid written, says a service runs: a second `pacs serve` on the same storage is refused before
    it touches anything (UsageError, exit 2), and a pid file left by a killed service (whose pid the system may have
    given to another program) is seen as stale, so `pacs stop` never signals a stranger (review 18). The kernel
    drops the lock when the process dies, however it dies. The file is removed on the way out, lock still held."""
    storage.mkdir(parents=True, exist_ok=True)
    path = storage / PID_FILE
    fd = _locked(path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        os.fsync(fd)
        yield fd
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _locked(path: Path) -> int:
    """A descriptor of `path` holding its exclusive flock; UsageError when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = read_pid(path.parent)
            raise UsageError(f"another `medseg pacs serve` (pid {pid or 'unknown'}) runs on this storage",
                             path=path.parent, hint="Stop it first (`medseg pacs stop`), or give this service a "
                             "storage folder of its own.") from None  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        os.close(fd)  # the service that held it removed the file meanwhile: lock the one there now


def read_pid(storage: Path) -> int | None:
    """The pid of the service running on this storage, or None: only while a process holds the lock of
    STORAGE/serve.pid (`service_lock`) and that pid is alive; a pid file nobody holds is stale."""
    try:
        fd = os.open(storage / PID_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        else:
            return None  # nobody holds it
    finally:
        os.close(fd)
    pid = int(text) if text.isdigit() else None
    return pid if pid is not None and process_alive(pid) else None
