"""Review 19 of the PACS service and the Dask batch: each test reproduces one defect the review proved, against the
real components (the SQLite queue, the SCP's store path, `medseg` processes, a real Dask LocalCluster, real CHAOS CT
slices)."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import chaos_files

import medseg.pacs.retention as retention
from medseg.pacs.config import PacsConfig
from medseg.pacs.queue import JobQueue
from medseg.pacs.scp import SUCCESS, StoreOutcome, store_instance
from medseg.pacs.storage import study_dir


def _config(tmp_path: Path, **extra: object) -> PacsConfig:
    return PacsConfig(storage=tmp_path / "store", destination={"folder": str(tmp_path / "seg")},
                      retention={"keep_days": 0.0}, **extra)  # fmt: skip


def _instance(shared: Path, study: str, k: int) -> tuple[bytes, str]:
    """A real CHAOS slice re-identified as an instance of `study`: (encoded bytes with file meta, SOP UID)."""
    ds = pydicom.dcmread(chaos_files(shared)[k])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, study + ".1", f"{study}.1.{k}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), str(ds.SOPInstanceUID)


def _store(shared: Path, config: PacsConfig, queue: JobQueue, study: str, k: int) -> StoreOutcome:
    data, sop = _instance(shared, study, k)
    return store_instance(data, sop, "PACS", config.storage, queue, 0.0)


# 1. a purge never deletes a study folder re-created by a new C-STORE ------------------------------------------------
def test_a_purge_keeps_an_instance_stored_while_its_trash_is_deleted(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After renaming the study folder aside under the lock, the purge deleted the trash AND the original path
    outside the lock: an instance of the same study acknowledged in between (a new folder at that path) was wiped."""
    config = _config(tmp_path)
    queue = JobQueue(config.queue_path)
    study = "1.2.826.0.1.19.1"
    for k in (30, 31):
        assert _store(shared, config, queue, study, k).status == SUCCESS
    queue.complete_due(lambda uid: str(study_dir(config.storage, uid)))
    lease = queue.lease("test", 60.0)
    queue.record_sent(lease, "folder:x", "key", "1.2.3")
    real_rmtree = shutil.rmtree
    acked: list[StoreOutcome] = []

    def slow_rmtree(path: Path, *args: object, **kwargs: object) -> None:
        """Deleting a big trash takes a while: a re-send of the study arrives then (the lock is free)."""
        if Path(path).parent.name == retention.PURGING and not acked:
            acked.append(_store(shared, config, JobQueue(config.queue_path), study, 32))
        real_rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(retention.shutil, "rmtree", slow_rmtree)
    (purged,) = retention.purge_expired(config, queue, now=time.time() + 1)
    assert purged.instances == 2 and acked and acked[0].status == SUCCESS
    (row,) = queue.instances(study)
    assert Path(str(row["path"])).is_file()
