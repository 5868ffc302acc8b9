"""`medseg batch`: many studies offline through the same durable queue, SEGs written to a folder."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from medseg.pacs.config import Destination, PacsConfig
from medseg.pacs.queue import JobQueue
from medseg.pacs.segment import discover_studies, load_segmenter
from medseg.pacs.worker import JobResult, run_job


def batch_config(out: Path, organ: str, model: str | None, backend: str, scheduler: str | None,
                 research: Path | None = None, research_key: Path | None = None,
                 research_options: list[str] | None = None) -> PacsConfig:  # fmt: skip
    """The service configuration for a batch: queue and results in OUT, SEGs to OUT/<StudyUID>/; `organ` is one or
    more organ names separated by commas (a usage error otherwise); with `research` (and its key) a de-identified
    copy of each segmented study is published there."""
    from medseg.errors import UsageError
    from medseg.infer.organs import parse_organs
    from medseg.pacs.config import Research, check_research

    if (research is None) != (research_key is None):
        raise UsageError("--research and --research-key go together", hint="Give both, or neither.")
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


def enqueue(config: PacsConfig, input_folder: Path) -> JobQueue:
    """A job per study under the input (jobs already in the queue from an earlier run are kept, not doubled)."""
    queue = JobQueue(config.queue_path)
    for name, folder in discover_studies(Path(input_folder)):
        queue.add_job(f"batch:{name}", str(folder))
    return queue


def run_batch(config: PacsConfig, queue: JobQueue, on_event: Callable[[str], None]) -> list[JobResult]:
    """Run every open job (locally, or on the Dask cluster named by `config.scheduler`) until none is left; jobs
    that a killed run of this host still holds are taken back at once, not when their lease expires."""
    from medseg.pacs.service import owner_name, reclaim_dead_leases

    for job_id in reclaim_dead_leases(queue):
        on_event(f"job {job_id}: its holder on this host is gone; queued again")
    results: list[JobResult] = []
    if not queue.open_jobs():
        return results
    if config.scheduler:
        from medseg.pacs.dask_workers import dispatch

        dispatch(config, queue, threading.Event(), on_event, results, until_empty=True)
        return results
    segmenter = load_segmenter(config.organs, config.model, config.backend, config.strict)
    while queue.open_jobs():
        lease = queue.lease(owner_name("batch"), config.lease_seconds)
        if lease is None:
            time.sleep(0.5)
            continue
        result = run_job(config, queue, lease, segmenter)
        results.append(result)
        on_event(f"job {result.job_id}: {result.state}" + (f" ({result.reason})" if result.reason else ""))
    return results
