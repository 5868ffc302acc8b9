"""One job, start to finish: segment the study, stamp the SEG's derived UIDs, send it, commit the ledger, and
(when the config has `research`) make the study's de-identified research copy before the job ends.

Each step is committed before the next is acted on, and every commit presents the lease's fence, so a worker that
lost its lease (expired, taken over) stops without writing. A send whose ledger row is missing (the process died
in between) is simply repeated: the SEG has the same UIDs, so the PACS holds one instance.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.errors import InvalidInputError, MedsegError, ProcessingError
from medseg.pacs.config import PacsConfig
from medseg.pacs.identity import idempotency_key, seg_source, stamp_seg
from medseg.pacs.queue import Backoff, Job, JobQueue, Lease, LeaseLost
from medseg.pacs.research import RECORD, ResearchOutcome
from medseg.pacs.segment import Segmenter, segment_study, software_version
from medseg.pacs.send import SendError, send
from medseg.pacs.storage import results_dir

if TYPE_CHECKING:
    from medseg.audit.session import AuditRecorder

CRASH_ENV = "MEDSEG_PACS_CRASH_AT"
STALL_ENV = "MEDSEG_PACS_STALL_AT"


def crash_point(name: str) -> None:
    """Test hooks for the fault tests: SIGKILL this process at the named step when MEDSEG_PACS_CRASH_AT names it;
    stall there for a minute when MEDSEG_PACS_STALL_AT does (a job that outlives any grace time, on any host)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(STALL_ENV) == name:
        time.sleep(60)


@dataclass(frozen=True)
class JobResult:
    """How one attempt ended: sent, pending, failed, quarantined, superseded (newer instances) or lost (lease taken
    over)."""

    job_id: int
    state: str
    reason: str | None = None
    outputs: tuple[str, ...] = ()


def backoff_of(config: PacsConfig) -> Backoff:
    """The queue's backoff from the config's retry section."""
    r = config.retry
    return Backoff(r.base_s, r.cap_s, r.max_attempts, r.failed_retry_after_s, r.max_rounds)


@contextmanager
def heartbeat(queue: JobQueue, lease: Lease, duration_s: float) -> Iterator[threading.Event]:
    """Renew the lease every third of its duration while the block runs; the event is set if it was lost."""
    lost, stop = threading.Event(), threading.Event()

    def beat() -> None:
        current = lease
        while not stop.wait(duration_s / 3):
            try:
                current = queue.renew(current, duration_s)
            except LeaseLost:
                lost.set()
                break
            except Exception:  # a busy database: try again at the next beat, the lease is still ours for now
                continue
        queue.close()

    t = threading.Thread(target=beat, name=f"lease-{lease.job.id}", daemon=True)
    t.start()
    try:
        yield lost
    finally:
        stop.set()
        t.join()


def seg_key(seg: Path, organs: list[str], weights_sha256: str, generation: int) -> str | None:
    """The idempotency key a stamped SEG of the study's `generation` would have if made by this model (weights) and
    software; None if unreadable."""
    import pydicom

    try:
        study, source, instances = seg_source(pydicom.dcmread(seg, stop_before_pixels=True))
    except (OSError, AttributeError, IndexError, pydicom.errors.InvalidDicomError):
        return None
    return idempotency_key(study, source, organs, weights_sha256, software_version(), instances, generation)


def _reusable(job: Job, organs: list[str], segmenter: Segmenter) -> bool:
    """Whether an earlier attempt's SEG is there and was made by this model and software (same idempotency key)."""
    if not (job.result and job.seg_sop_uid and job.idem_key and Path(job.result).is_file()):
        return False
    return seg_key(Path(job.result), organs, segmenter.weights_sha256, job.generation) == job.idem_key


def _segmented(config: PacsConfig, queue: JobQueue, lease: Lease, segmenter: Segmenter) -> Path:
    """The job's stamped SEG: reused when an earlier attempt of the same model made it, else segmented now
    (quarantine reasons raise InvalidInputError, processing failures worth another attempt ProcessingError)."""
    job = lease.job
    if _reusable(job, list(config.organs), segmenter):
        return Path(job.result or "")
    short = queue.short_after_purge(job.study_uid, job.generation)
    if short is not None:
        raise InvalidInputError(
            f"only {short[0]} of the {short[1]} instances the study had before retention deleted its files came back",
            hint="Send the whole study again: once all of it is back it is segmented as a new generation.",
        )
    with heartbeat(queue, lease, config.lease_seconds) as lost:
        outcome = segment_study(segmenter, Path(job.input), results_dir(config.storage, job.id))
        crash_point("after_inference")
    if lost.is_set():
        raise LeaseLost(f"job {job.id}: lease lost during inference")
    if outcome.seg is None:
        raise (ProcessingError if outcome.transient else InvalidInputError)(outcome.reason or "not segmented")
    ident = stamp_seg(outcome.seg, list(config.organs), segmenter.weights_sha256, software_version(), job.generation)
    made_by = (*segmenter.model_name, segmenter.weights_sha256)
    queue.set_identity(lease, ident.key, ident.series_uid, ident.sop_uid, str(outcome.seg), made_by)
    return outcome.seg


def run_job(config: PacsConfig, queue: JobQueue, lease: Lease, segmenter: Segmenter) -> JobResult:
    """One attempt at a leased job, audited; never raises for the job's own failures."""
    from medseg.pacs.audit import audited_job

    ended: list[JobResult] = []
    written: list[Path] = []
    try:
        with audited_job(lease.job, config.destination.name) as rec:
            written = rec.output_paths
            rec.set_model(*segmenter.model_name, segmenter.weights_sha256)
            _attempt(config, queue, lease, segmenter, rec, ended)
    except MedsegError as exc:  # quarantine, send failure, lost lease: on the audit trail and in the queue
        if not ended:
            ended.append(JobResult(lease.job.id, "lost", exc.one_line()))
    except Exception as exc:  # a fault nobody foresaw (a library's ValueError): an attempt that failed, not a loop
        ended.append(fail_unexpected(config, queue, lease, exc))
    return replace(ended[-1], outputs=tuple(str(p) for p in written))


def fail_unexpected(config: PacsConfig, queue: JobQueue, lease: Lease, exc: BaseException) -> JobResult:
    """End an attempt that raised an unexpected exception as a failed attempt: 'pending' with backoff, 'failed' once
    `max_attempts` are used up (docs/pacs.md: never a loop). Left to expire instead, the lease was taken back again and
    again without any limit (review 18). 'lost' when the lease is no longer this worker's."""
    reason = f"internal error: {type(exc).__name__}: {exc}"
    try:
        return JobResult(lease.job.id, queue.fail(lease, reason, backoff_of(config)), reason)
    except LeaseLost as lost:
        return JobResult(lease.job.id, "lost", lost.one_line())


def _superseded(queue: JobQueue, lease: Lease, rec: AuditRecorder, ended: list[JobResult]) -> bool:
    """End the job as superseded when its study received instances while it ran; the newer job segments it whole."""
    newer = queue.supersede_if_stale(lease)
    if newer is None:
        return False
    rec.set_outcome_detail("superseded")
    ended.append(JobResult(lease.job.id, "superseded", f"generation {newer} arrived while it ran"))
    return True


def _research_copy(config: PacsConfig, queue: JobQueue, lease: Lease, segmenter: Segmenter) -> ResearchOutcome:
    """The job's study and SEG de-identified, leak-checked and published (or withheld), under the lease's heartbeat."""
    from medseg.pacs.research import make_copy

    assert config.research is not None
    job = queue.job(lease.job.id)
    assert job is not None
    inputs = [Path(job.input)] + ([Path(job.result)] if config.research.include_seg and job.result else [])
    name, version, weights = queue.seg_model(job.id) or (*segmenter.model_name, segmenter.weights_sha256)
    record = {"generation": job.generation, "organs": list(config.organs), "software": software_version(),
              "model": {"name": name, "version": version, "weights_sha256": weights}}  # fmt: skip
    with heartbeat(queue, lease, config.lease_seconds) as lost:
        echo = frozenset({f"{job.seg_sop_uid}.dcm"} if job.seg_sop_uid else set())  # the PACS sent our SEG back
        outcome = make_copy(config.research, config.storage, job.id, lease.fence, inputs, record,
                            on_file=lambda _r: crash_point("during_research"), skip=echo)  # fmt: skip
        crash_point("after_research")
    if lost.is_set():
        raise LeaseLost(f"job {job.id}: lease lost during the research copy")
    return outcome


def _finish(config: PacsConfig, queue: JobQueue, lease: Lease, segmenter: Segmenter, rec: AuditRecorder,
            ended: list[JobResult], note: str | None = None) -> None:  # fmt: skip
    """The SEG is in the ledger: make the research copy when one is configured and not yet made, then end 'sent'.
    A copy that could not be made (disk, key) leaves the job pending for another attempt, which does not send
    again; a copy the leak check refused is withheld for good and the job ends 'sent'."""
    job = lease.job
    if config.research is not None and not queue.research(job.id):
        try:
            outcome = _research_copy(config, queue, lease, segmenter)
        except LeaseLost:
            raise
        except (MedsegError, OSError) as exc:
            reason = "research copy: " + (exc.one_line() if isinstance(exc, MedsegError) else str(exc))
            state = queue.fail(lease, reason, backoff_of(config))
            rec.set_outcome_detail(state)
            ended.append(JobResult(job.id, state, reason))
            raise ProcessingError(f"job {job.id} {state}") from exc
        queue.record_research(lease, outcome.state, outcome.folder, outcome.files, outcome.quarantined, outcome.reason)
        if outcome.folder is not None:
            rec.add_outputs([config.research.folder / outcome.folder / RECORD])
        note = f"research copy {outcome.state}" + (f": {outcome.reason}" if outcome.reason else "")
    queue.finish_from_ledger(lease)
    rec.set_outcome_detail("sent")
    ended.append(JobResult(job.id, "sent", note))


def _attempt(
    config: PacsConfig, queue: JobQueue, lease: Lease, segmenter: Segmenter, rec: AuditRecorder, ended: list[JobResult]
) -> None:
    job, dest = lease.job, config.destination
    if queue.sent_to(job.id, dest.name):
        made_by = queue.seg_model(job.id)
        if made_by is not None:  # the SEG sent may be an earlier run's other model: the audit names that one
            rec.set_model(*made_by)
        _finish(config, queue, lease, segmenter, rec, ended, "already in the ledger")
        return
    try:
        seg = _segmented(config, queue, lease, segmenter)
    except LeaseLost:
        raise
    except ProcessingError as exc:  # not the study's fault (an output not writable): retried with backoff
        if _superseded(queue, lease, rec, ended):
            return
        state = queue.fail(lease, exc.one_line(), backoff_of(config))
        rec.set_outcome_detail(state)
        ended.append(JobResult(job.id, state, exc.one_line()))
        raise
    except MedsegError as exc:
        if _superseded(queue, lease, rec, ended):  # refused maybe because the study changed under it
            return
        reason = exc.one_line()
        queue.quarantine(lease, reason)
        rec.set_outcome_detail("quarantined")
        ended.append(JobResult(job.id, "quarantined", reason))
        raise InvalidInputError(f"job {job.id} quarantined") from exc
    rec.add_outputs([seg])
    if _superseded(queue, lease, rec, ended):  # a SEG of the study as it was would reach the PACS beside the newer one
        return
    fresh = queue.job(job.id)
    assert fresh is not None and fresh.idem_key and fresh.seg_sop_uid
    try:
        crash_point("before_send")
        how = send(seg, dest, config.listen.ae_title)
        crash_point("after_send")
    except SendError as exc:
        state = queue.fail(lease, exc.one_line(), backoff_of(config))
        rec.set_outcome_detail(state)
        ended.append(JobResult(job.id, state, exc.one_line()))
        raise ProcessingError(f"job {job.id} {state}") from exc
    warning = how if how.startswith("stored with a warning") else None  # kept as the sent job's reason
    queue.record_sent(lease, dest.name, fresh.idem_key, fresh.seg_sop_uid, finish=config.research is None,
                      note=warning)  # fmt: skip
    if config.research is None:
        rec.set_outcome_detail("sent")
        ended.append(JobResult(job.id, "sent", warning))
        return
    crash_point("before_research")
    _finish(config, queue, lease, segmenter, rec, ended)
