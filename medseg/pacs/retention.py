"""Retention: received studies and job results are patient data, kept only `retention.keep_days` after the study
settled (complete, no instance and no job open or ended since then).

The queue forgets the study's instances first (so a later re-send is stored and segmented as new, not taken for a
duplicate of a deleted file) and logs the purge; the study folder is then moved aside under the study's lock (so an
instance being written and recorded at that moment is never moved with it) and deleted with the study's job
results and research staging; only then is the purge marked done. A crash in between leaves the purge unfinished,
and the next pass finds the study again and deletes what is left; a finished study is not looked at again.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from medseg.pacs.config import PacsConfig
from medseg.pacs.queue import JobQueue
from medseg.pacs.research import STAGING, WITHHELD
from medseg.pacs.storage import results_dir, study_dir, study_lock

PURGING = "purging"
DAY_S = 86400.0


@dataclass(frozen=True)
class Purged:
    """One study whose files retention deleted: its instance rows dropped and the folders removed."""

    study_uid: str
    instances: int
    folders: int
    paths: tuple[str, ...] = ()  # the folders, relative to the storage (what `pacs purge` lists)


def study_folders(config: PacsConfig, queue: JobQueue, study_uid: str) -> list[Path]:
    """Everything in storage made from one study: its received instances, its jobs' results and research staging."""
    jobs = [j.id for j in queue.jobs(study_uid=study_uid)]
    research = Path(config.storage) / STAGING
    folders = [study_dir(config.storage, study_uid)] + [results_dir(config.storage, j) for j in jobs]
    folders += [research / WITHHELD / f"job-{j}" for j in jobs]
    folders += [p for j in jobs for p in research.glob(f"job-{j}-f*")] if research.is_dir() else []
    return [f for f in folders if f.exists()]


def purge_expired(config: PacsConfig, queue: JobQueue, now: float | None = None, dry_run: bool = False) -> list[Purged]:
    """Delete the files of every study settled more than `retention.keep_days` ago (nothing when it is None);
    `dry_run` only lists them."""
    keep = config.retention.keep_days
    if keep is None:
        return []
    now = time.time() if now is None else now
    cutoff = now - keep * DAY_S
    if not dry_run:
        shutil.rmtree(Path(config.storage) / PURGING, ignore_errors=True)  # what a pass killed mid-way moved aside
    done = []
    for row in queue.settled_before(cutoff):
        uid = str(row["study_uid"])
        folders = study_folders(config, queue, uid)
        if dry_run:
            done.append(Purged(uid, int(row["instances"]), len(folders), _relative(config, folders)))  # type: ignore[call-overload]
            continue
        trash = Path(config.storage) / PURGING / f"{uid}-{int(now * 1000)}"
        with study_lock(uid):
            forgotten = queue.forget_instances(uid, cutoff, now)
            if forgotten is None:
                continue  # an instance or a job arrived meanwhile
            received = study_dir(config.storage, uid)
            if received.exists():
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.rename(received, trash)
        _delete(trash, folders, study_dir(config.storage, uid))
        queue.finish_purge(uid)
        done.append(Purged(uid, forgotten, len(folders), _relative(config, folders)))
    return done


def _delete(trash: Path, folders: list[Path], received: Path) -> None:
    """Delete a purged study's files outside its lock: the study folder only as the `trash` it was renamed to under
    the lock, never at its live path, where an instance of the same study re-sent meanwhile is stored (and
    acknowledged) in a new folder (review 19: the second rmtree wiped it); then its jobs' results and staging."""
    for folder in [trash, *(f for f in folders if f != received)]:
        shutil.rmtree(folder, ignore_errors=True)


def _relative(config: PacsConfig, folders: list[Path]) -> tuple[str, ...]:
    """The folders as paths relative to the storage (studies/<UID>, results/job-N, ...), for the listing."""
    root = Path(config.storage)
    return tuple(str(f.relative_to(root)) if f.is_relative_to(root) else str(f) for f in folders)
