"""Where received instances live: studies/<StudyUID>/<SeriesUID>/<SOPUID>.dcm, each written durably.

Durable = temporary file, fsync, rename, fsync of the folder (and of each folder created), so an instance that
was answered with success is on disk whatever happens next.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medseg.errors import InvalidInputError, ProcessingError
from medseg.io.atomic import atomic_path, is_unfinished_write

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STUDY_LOCKS = tuple(threading.Lock() for _ in range(256))  # striped: bounded memory for a service that runs for years


@contextmanager
def study_lock(study_uid: str) -> Iterator[None]:
    """Held while an instance of the study is written and recorded, and while retention removes the study's files,
    so a purge never moves away an instance that was just acknowledged (one lock of 256, chosen by the UID)."""
    with _STUDY_LOCKS[zlib.crc32(study_uid.encode()) % len(_STUDY_LOCKS)]:
        yield


class DiskFull(ProcessingError):
    """No space left to store an instance (the C-STORE is answered with an out-of-resources status)."""


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path) -> None:
    """mkdir -p, fsyncing each parent whose entries changed."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


def is_instance_path(path: Path) -> bool:
    """Whether `path` has the layout of a received instance (`instance_path`: studies/<StudyUID>/<SeriesUID>/
    <SOPUID>.dcm, each a valid UID)."""
    study = path.parent.parent
    names = (study.name, path.parent.name, path.stem)
    return path.suffix == ".dcm" and study.parent.name == "studies" and all(_UID.match(n) for n in names)


def durable_write(path: Path, data: bytes, private: bool | None = None) -> None:
    """Write `data` to `path`: temp file, fsync, rename, fsync folder; DiskFull when the disk is full.

    A received instance (patient data the service holds, `private` None and the `instance_path` layout) is 0600;
    results (the SEG stamped in results/, the one a folder destination receives) get 0666 less the umask like every
    other output (README), so the account that collects a batch's SEGs can read them beside their label maps."""
    private = is_instance_path(path) if private is None else private
    try:
        make_dirs(path.parent)
        with atomic_path(path, overwrite=True, private=private) as tmp:
            tmp.write_bytes(data)
        fsync_dir(path.parent)
    except (OSError, ProcessingError) as exc:
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull("no space left on the storage disk", path=path, hint="Free space in storage.") from exc
        if isinstance(exc, ProcessingError):
            raise
        raise ProcessingError(f"cannot store: {exc.strerror}", path=path) from exc


def instance_path(root: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """The file of one instance; UIDs are checked so they cannot name a path outside `root`."""
    for uid in (study_uid, series_uid, sop_uid):
        if not _UID.match(uid) or len(uid) > 64:
            raise InvalidInputError(f"not a valid DICOM UID: {uid!r}", hint="The sender must send valid UIDs.")
    return study_dir(root, study_uid) / series_uid / f"{sop_uid}.dcm"


def study_dir(root: Path, study_uid: str) -> Path:
    """The folder holding one study's instances (what the worker segments)."""
    return Path(root) / "studies" / study_uid


def results_dir(root: Path, job_id: int) -> Path:
    """Where one job writes its outputs."""
    return Path(root) / "results" / f"job-{job_id}"


def sweep_unfinished_writes(root: Path, older_than_s: float = 60.0) -> list[Path]:
    """Delete temporary files of instance writes a killed receiver left under `root`/studies (never input, but
    disk space); only those untouched for `older_than_s`, so a write in progress elsewhere is never cut."""
    cutoff = time.time() - older_than_s
    removed = []
    for folder, _dirs, names in os.walk(Path(root) / "studies"):
        for name in names:
            path = Path(folder) / name
            try:
                if is_unfinished_write(name) and path.lstat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
    return removed
