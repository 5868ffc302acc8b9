"""Audit trail entries of the service: each completed study received, each job attempt (with its send)."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.audit.session import AuditRecorder, audit_session
from medseg.pacs.queue import Job


def software() -> dict[str, str]:
    """The software versions on every event."""
    return {"medseg": __version__, "python": platform.python_version()}


@contextmanager
def audited_job(job: Job, destination: str) -> Iterator[AuditRecorder]:
    """One job attempt: its study (keyed reference), generation, attempt and fence, destination."""
    params = {
        "job": job.id,
        "study_uid": job.study_uid,
        "generation": job.generation,
        "attempt": job.attempts,
        "fence": job.fence,
        "destination": destination,
    }
    with audit_session("pacs.job", params, software=software()) as rec:
        yield rec


def record_study(study_uid: str, generation: int, instances: int, folder: Path, job_id: int) -> None:
    """A study received completely (its quiet time passed): its files' digests and the job made for it."""
    params = {"study_uid": study_uid, "generation": generation, "instances": instances, "job": job_id}
    with audit_session("pacs.receive", params, software=software()) as rec:
        rec.add_inputs([folder])


def record_purge(purged: list, keep_days: float | None) -> None:
    """Retention deleted the files of settled studies: how many studies and instance records, and the rule."""
    params = {"studies": len(purged), "instances": sum(p.instances for p in purged), "keep_days": keep_days}
    with audit_session("pacs.purge", params, software=software()) as rec:
        rec.set_outcome_detail(f"purged:{len(purged)}")


def record_not_input(study_uid: str, generation: int, instances: int, folder: Path) -> None:
    """A study stored that holds no image input (no job is made): its files' digests, outcome 'not input'. Such
    studies carry patient data too; before review 18 they were stored without any audit record."""
    params = {"study_uid": study_uid, "generation": generation, "instances": instances, "job": None}
    with audit_session("pacs.receive", params, software=software()) as rec:
        rec.add_inputs([folder])
        rec.set_outcome_detail("not input")


def record_dask_job(job: Job, destination: str, result: Any, worker: str, model: list[str] | None) -> None:
    """A job run by a Dask worker, recorded in this (the dispatching) host's trail: the worker records its attempt
    in its own trail (MEDSEG_AUDIT_DIR of the worker's environment, maybe another host's), which the batch's or the
    service's trail never saw (review 19). Outputs (the SEG, the research record) are digested here, from the
    storage the workers share; the outcome detail is the job's state after the attempt."""
    params = {"job": job.id, "study_uid": job.study_uid, "generation": job.generation, "attempt": job.attempts,
              "fence": job.fence, "destination": destination, "worker": worker}  # fmt: skip
    with audit_session("pacs.job.dask", params, software=software()) as rec:
        if model is not None:
            rec.set_model(*model)
        rec.add_outputs(result.outputs)
        rec.set_outcome_detail(result.state)
