"""`medseg batch`: many studies offline through the same durable queue, SEGs written to a folder."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from medseg.errors import ProcessingError
from medseg.pacs.config import Destination, PacsConfig
from medseg.pacs.dask_workers import SchedulerLost
from medseg.pacs.queue import JobQueue, Recipe
from medseg.pacs.segment import discover_studies, fallback_warning, load_segmenter
from medseg.pacs.worker import JobResult, backoff_of, run_job


class BatchInterrupted(ProcessingError):
    """Ctrl-C or SIGTERM stopped the batch; the job it was running is queued again, the attempt not counted."""

    exit_code = 130


@dataclass(frozen=True)
class BatchStudy:
    """One study of this run's input: its name, folder, job, and what the queue knew of it ('new', 'open',
    'retried', 'quarantined', 'done', 'redone'); `same_as` names an earlier study of this run with the same content;
    `made_with` what the earlier result found was made with (organs and model), for 'done' and 'redone'."""

    name: str
    folder: Path
    job_id: int
    how: str
    same_as: str | None = None
    made_with: str | None = None


def batch_config(out: Path, organ: str, model: str | None, backend: str, scheduler: str | None,
                 research: Path | None = None, research_key: Path | None = None,
                 research_options: list[str] | None = None) -> PacsConfig:  # fmt: skip
    """The service configuration for a batch: queue and results in OUT, SEGs to OUT/<StudyUID>/; `organ` is one or
    more organ names separated by commas (a usage error otherwise); with `research` (and its key) a de-identified
    copy of each segmented study is published there."""
    from medseg.errors import UsageError
    from medseg.infer.organs import parse_organs
    from medseg.infer.pipeline import check_thread_setting
    from medseg.pacs.config import Research, check_research, check_scheduler_address

    check_thread_setting()
    if (research is None) != (research_key is None):
        raise UsageError("--research and --research-key go together", hint="Give both, or neither.")
    if scheduler is not None:
        try:
            scheduler = check_scheduler_address(scheduler)
        except ValueError as exc:
            raise UsageError(f"--scheduler: {exc}", hint="Give the address the Dask scheduler prints at start, "
                             "e.g. tcp://10.0.0.5:8786.") from exc  # fmt: skip
    out = Path(out).resolve()
    copy = None
    if research is not None and research_key is not None:
        try:
            copy = Research(folder=Path(research).resolve(), key_file=research_key, options=research_options or [])
        except ValidationError as exc:
            raise UsageError(f"--research-option: {exc.errors()[0]['msg']}", hint="See `medseg deid --help`.") from exc
    config = PacsConfig(
        storage=out, destination=Destination(folder=out / "seg"), organs=list(parse_organs(organ)), model=model,
        backend=backend, scheduler=scheduler, retry={"base_s": 1.0, "cap_s": 10.0, "max_attempts": 3},
        research=copy,
    )  # fmt: skip
    check_research(config)
    return config


def check_out(out: Path) -> Path:
    """OUT resolved, made if missing, and proven writable (a file created and removed in it), else 'cannot write
    output' naming the folder."""
    out = Path(out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medseg-write-check-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ProcessingError(f"cannot write output: {exc.strerror or exc}", path=out,
                              hint="Choose a writable --out folder.") from exc  # fmt: skip
    return out


def study_identity(source: Path) -> tuple[str, str]:
    """(study key, content digest) of a study read in place: the key is its StudyInstanceUID (as the service keys
    studies; 'sha256:<digest>' for a file without one), the digest the SHA-256 of its files' SHA-256s, sorted, so
    the same files under another folder name are the same study and a repaired study is a new one."""
    from medseg.io.series import walk_files

    files = walk_files(source).files
    digest = hashlib.sha256("\n".join(sorted(_sha256(f) for f in files)).encode()).hexdigest()
    return _study_uid(files) or f"sha256:{digest}", digest


def _sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _study_uid(files: list[Path]) -> str | None:
    """The StudyInstanceUID of the first of `files` that is DICOM and has one."""
    import pydicom

    for f in files:
        try:
            uid = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID
        except Exception:  # not DICOM, unreadable, no StudyInstanceUID: the next file may tell
            continue
        if uid:
            return str(uid)
    return None


def enqueue(config: PacsConfig, input_folder: Path) -> JobQueue:
    """`enqueue_studies`, for callers that need only the queue."""
    return enqueue_studies(config, input_folder)[0]


def enqueue_studies(
    config: PacsConfig, input_folder: Path, on_note: Callable[[str], None] = lambda note: None
) -> tuple[JobQueue, list[BatchStudy]]:
    """A job per study under the input (resolved, so a rerun from another folder finds it), keyed by study UID,
    content, organ set and model: a study already in the queue is found again whatever its folder's name (failed
    ones queued again), a new or changed one is a new job, and so is one done only with other organs or another
    model (said in a note). What is not read (a series skipped, files) goes to `on_note`."""
    queue = JobQueue(config.queue_path)
    recipe = batch_recipe(config)
    studies: list[BatchStudy] = []
    seen: dict[int, str] = {}
    found, notes = discover_studies(Path(input_folder).resolve())
    for note in notes:
        on_note(note)
    for name, folder in found:
        study_uid, digest = study_identity(folder)
        earlier = {j.id for j in queue.jobs("sent", study_uid)}
        job, how = queue.add_study(study_uid, digest, str(folder), recipe=recipe)
        made = (queue.recipe(job.id) or recipe).describe() if how == "done" else None
        study = BatchStudy(name, folder, job.id, how, seen.get(job.id), made)
        if how == "redone":
            study = _redone(study, queue, earlier, recipe, on_note)
        studies.append(study)
        seen.setdefault(job.id, name)
    return queue, studies


def batch_recipe(config: PacsConfig) -> Recipe:
    """The organ set and model (name, version, weights digest from its card) this run segments with."""
    from medseg.pacs.segment import served_model

    organs, installed = served_model(config.organs, config.model)
    card = installed.card
    return Recipe(tuple(organs), (str(card.name), str(card.version), str(card.weights.sha256)))


def _redone(study: BatchStudy, queue: JobQueue, earlier: set[int], recipe: Recipe,
            on_note: Callable[[str], None]) -> BatchStudy:  # fmt: skip
    """A study done before only with other organs or another model: the note naming both, shown under --quiet too
    (the earlier result is not what was asked for, and is kept)."""
    made = [(j, queue.recipe(j)) for j in sorted(earlier)]
    before = "; ".join(f"job {j}: {r.describe() if r else 'organs not recorded'}" for j, r in made)
    on_note(f"study {study.name}: segmented in an earlier run only with other organs or another model ({before}); "
            f"segmented again for {recipe.describe()} as job {study.job_id}, the earlier result kept")  # fmt: skip
    return replace(study, made_with=before)


def run_batch(config: PacsConfig, queue: JobQueue, on_event: Callable[[str], None]) -> list[JobResult]:
    """Run every open job (locally, or on the Dask cluster named by `config.scheduler`) until none is left; jobs
    that a killed run of this host still holds are taken back at once, not when their lease expires. Interrupted
    (KeyboardInterrupt: Ctrl-C, or SIGTERM turned into one by the caller), the jobs this process holds are queued
    again without counting the attempt, and BatchInterrupted says so."""
    from medseg.pacs.service import reclaim_dead_leases, reclaimed_event

    for job_id, state in reclaim_dead_leases(queue, backoff_of(config)).items():
        on_event(reclaimed_event(job_id, state))
    results: list[JobResult] = []
    try:
        _run(config, queue, on_event, results)
    except SchedulerLost as exc:
        handed = hand_back_own(queue)
        what = f"; {_jobs(handed)} queued again, the attempt not counted" if handed else ""
        raise ProcessingError(f"{exc}{what}", hint="Check that the Dask scheduler runs and this host reaches it, "
                              "then run the same `medseg batch` again to finish what is left.") from exc  # fmt: skip
    except KeyboardInterrupt as exc:
        handed = hand_back_own(queue)
        jobs = ("job " if len(handed) == 1 else "jobs ") + ", ".join(map(str, handed))
        what = f"{jobs} queued again, the attempt not counted" if handed else "no job was running"
        raise BatchInterrupted(f"interrupted ({exc.args[0] if exc.args else 'Ctrl-C'}): {what}",
                               hint="Run the same `medseg batch` again to finish what is left.") from exc  # fmt: skip
    return results


def _jobs(ids: list[int]) -> str:
    """'job 3' or 'jobs 3, 4'."""
    return ("job " if len(ids) == 1 else "jobs ") + ", ".join(map(str, ids))


def hand_back_own(queue: JobQueue) -> list[int]:
    """Jobs leased by this process are queued again, the attempt not counted (as `medseg pacs stop` does)."""
    from medseg.pacs.service import owner_name

    prefix = owner_name("")
    return [j.id for j in queue.jobs("running")
            if j.lease_owner and j.lease_owner.startswith(prefix) and queue.release(j.id, j.fence)]  # fmt: skip


def _run(config: PacsConfig, queue: JobQueue, on_event: Callable[[str], None], results: list[JobResult]) -> None:
    """The body of `run_batch`: lease and run jobs until none is open."""
    from medseg.pacs.service import owner_name

    if not queue.open_jobs():
        return
    if config.scheduler:
        from medseg.pacs.dask_workers import dispatch

        dispatch(config, queue, threading.Event(), on_event, results, until_empty=True)
        return
    segmenter = load_segmenter(config.organs, config.model, config.backend, config.strict)
    warning = fallback_warning(segmenter)
    if warning:
        on_event(warning)
    while queue.open_jobs():
        lease = queue.lease(owner_name("batch"), config.lease_seconds, backoff=backoff_of(config))
        if lease is None:
            time.sleep(0.5)
            continue
        result = run_job(config, queue, lease, segmenter)
        results.append(result)
        on_event(f"job {result.job_id}: {result.state}" + (f" ({result.reason})" if result.reason else ""))
