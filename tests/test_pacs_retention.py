"""Retention: received studies and job results (patient data) are deleted `retention.keep_days` after the study
settled; studies with an open or failed job are kept; a re-send after a purge is segmented as new; a purge never
moves away an instance being written; a pass killed mid-way is finished by the next."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
import yaml
from pacs_helpers import chaos_files

from medseg.pacs.config import PacsConfig
from medseg.pacs.queue import Backoff, JobQueue
from medseg.pacs.retention import PURGING, purge_expired
from medseg.pacs.scp import SUCCESS, store_instance
from medseg.pacs.service import service_lock
from medseg.pacs.storage import results_dir, study_dir, study_lock


def _config(tmp_path: Path, keep_days: float | None = 0.0) -> PacsConfig:
    return PacsConfig(storage=tmp_path / "store", destination={"folder": str(tmp_path / "seg")},
                      retention={"keep_days": keep_days})  # fmt: skip


def _receive(shared: Path, config: PacsConfig, queue: JobQueue, study: str, ks: range) -> list[str]:
    """Real CHAOS slices stored as `study` through the SCP's store path; their SOP Instance UIDs."""
    import io

    sops = []
    for k in ks:
        ds = pydicom.dcmread(chaos_files(shared)[k])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, study + ".1", f"{study}.1.{k}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out = store_instance(buf.getvalue(), ds.SOPInstanceUID, "PACS", config.storage, queue, 0.0)
        assert out.status == SUCCESS
        sops.append(ds.SOPInstanceUID)
    return sops


def _finish(config: PacsConfig, queue: JobQueue, study: str, state: str) -> int:
    """The study's job, leased and ended in `state` (sent or failed), with a results folder like a real one."""
    queue.complete_due(lambda uid: str(study_dir(config.storage, uid)))
    lease = queue.lease("test", 60.0)
    assert lease is not None and lease.job.study_uid == study
    results_dir(config.storage, lease.job.id).mkdir(parents=True)
    (results_dir(config.storage, lease.job.id) / "labels.nii.gz").write_bytes(b"patient data")
    if state == "sent":
        queue.record_sent(lease, "folder:x", "key", "1.2.3")
    else:
        queue.fail(lease, "destination down", Backoff(max_attempts=1))
    return lease.job.id


def test_settled_studies_lose_their_files_and_open_ones_keep_them(shared: Path, tmp_path: Path) -> None:
    config = _config(tmp_path)
    queue = JobQueue(config.queue_path)
    done, failed, receiving = "1.2.826.0.1.9.1", "1.2.826.0.1.9.2", "1.2.826.0.1.9.3"
    sops = _receive(shared, config, queue, done, range(30, 33))
    done_job = _finish(config, queue, done, "sent")
    _receive(shared, config, queue, failed, range(40, 42))
    failed_job = _finish(config, queue, failed, "failed")
    import io

    ds = pydicom.dcmread(chaos_files(shared)[50])
    ds.StudyInstanceUID, ds.SOPInstanceUID = receiving, receiving + ".9"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    store_instance(buf.getvalue(), ds.SOPInstanceUID, "PACS", config.storage, queue, 3600.0)  # still receiving
    assert [p.study_uid for p in purge_expired(config, queue, now=time.time() + 1, dry_run=True)] == [done]
    assert study_dir(config.storage, done).exists()  # a dry run deletes nothing
    (purged,) = purge_expired(config, queue, now=time.time() + 1)
    assert (purged.study_uid, purged.instances, purged.folders) == (done, 3, 2)
    assert not study_dir(config.storage, done).exists() and not results_dir(config.storage, done_job).exists()
    assert study_dir(config.storage, failed).exists() and results_dir(config.storage, failed_job).exists()
    assert study_dir(config.storage, receiving).exists()
    assert queue.instances(done) == [] and queue.job(done_job).state == "sent" and len(queue.ledger()) == 1
    assert [(p["study_uid"], p["instances"]) for p in queue.purges()] == [(done, 3)]
    from medseg.pacs.status import status

    assert status(queue)["retention"]["studies_purged"] == 1
    assert purge_expired(config, queue, now=time.time() + 2) == []  # nothing left to do
    again = _receive(shared, config, queue, done, range(30, 33))  # the PACS sends the study again
    assert again == sops and len(queue.instances(done)) == 3  # stored as new, not taken for duplicates
    (job,) = queue.complete_due()
    assert job.study_uid == done and job.generation == 2
    assert queue.short_after_purge(done, job.generation) is None  # all of it came back


def test_a_partial_resend_after_a_purge_is_quarantined_not_sent(shared: Path, tmp_path: Path) -> None:
    """After retention deleted a study's files, only 1 of its 3 slices comes back: its SEG would replace the whole
    study's SEG in the PACS (same UIDs), so the job is quarantined with the counts; the rest arriving makes a new
    generation that is segmented."""
    from medseg.pacs.segment import load_segmenter
    from medseg.pacs.worker import run_job

    config = _config(tmp_path)
    queue = JobQueue(config.queue_path)
    study = "1.2.826.0.1.9.8"
    _receive(shared, config, queue, study, range(30, 33))
    _finish(config, queue, study, "sent")
    assert len(purge_expired(config, queue, now=time.time() + 1)) == 1
    _receive(shared, config, queue, study, range(31, 32))
    queue.complete_due(lambda uid: str(study_dir(config.storage, uid)))
    lease = queue.lease("test", 60.0)
    assert lease is not None and lease.job.generation == 2
    result = run_job(config, queue, lease, load_segmenter("liver"))
    assert result.state == "quarantined" and result.reason is not None
    assert "only 1 of the 3 instances the study had before retention deleted its files came back" in result.reason
    assert len(queue.ledger()) == 1  # nothing sent for the partial study
    _receive(shared, config, queue, study, range(30, 33))
    (job,) = queue.complete_due()
    assert job.generation == 3 and queue.short_after_purge(study, 3) is None


def test_kept_for_keep_days_and_never_without_retention(shared: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, keep_days=30)
    queue = JobQueue(config.queue_path)
    _receive(shared, config, queue, "1.2.826.0.1.9.4", range(30, 32))
    _finish(config, queue, "1.2.826.0.1.9.4", "sent")
    assert purge_expired(config, queue, now=time.time() + 29 * 86400) == []
    assert len(purge_expired(config, queue, now=time.time() + 31 * 86400, dry_run=True)) == 1
    assert purge_expired(_config(tmp_path, keep_days=None), queue, now=time.time() + 10**9) == []


def test_a_purge_waits_for_an_instance_being_written_and_recorded(shared: Path, tmp_path: Path) -> None:
    """The store path holds the study's lock from the file write to the queue row; a purge of the same study must
    wait for it, or it could move away an instance the sender was just told is stored."""
    config = _config(tmp_path)
    queue = JobQueue(config.queue_path)
    study = "1.2.826.0.1.9.5"
    _receive(shared, config, queue, study, range(30, 32))
    _finish(config, queue, study, "sent")
    with study_lock(study):
        runner = threading.Thread(target=purge_expired, args=(config, JobQueue(config.queue_path), time.time() + 1))
        runner.start()
        runner.join(0.5)
        assert runner.is_alive() and study_dir(config.storage, study).exists()
    runner.join(30)
    assert not runner.is_alive() and not study_dir(config.storage, study).exists()


def test_the_store_path_holds_the_study_lock_from_write_to_record(shared: Path, tmp_path: Path) -> None:
    """The other half of the guarantee: while the study's lock is held (a purge moving its folder), an instance of
    that study is neither written nor recorded; it is stored once the lock is released."""
    config = _config(tmp_path)
    queue = JobQueue(config.queue_path)
    study = "1.2.826.0.1.9.9"
    with study_lock(study):
        runner = threading.Thread(target=_receive, args=(shared, config, JobQueue(config.queue_path), study,
                                                         range(30, 31)))  # fmt: skip
        runner.start()
        runner.join(0.5)
        assert runner.is_alive() and not study_dir(config.storage, study).exists() and queue.instances() == []
    runner.join(30)
    assert not runner.is_alive() and len(queue.instances(study)) == 1


def test_a_pass_killed_mid_way_is_finished_by_the_next(shared: Path, tmp_path: Path) -> None:
    """Killed after the queue forgot the instances (folder still there) and after the folder was moved aside."""
    config = _config(tmp_path)
    queue = JobQueue(config.queue_path)
    study = "1.2.826.0.1.9.6"
    _receive(shared, config, queue, study, range(30, 32))
    _finish(config, queue, study, "sent")
    now = time.time() + 1
    assert queue.forget_instances(study, now - 0.0, now) == 2  # the first step alone, as if killed right after it
    aside = config.storage / PURGING / "left-by-a-killed-pass"
    aside.mkdir(parents=True)
    (aside / "x.dcm").write_bytes(b"patient data")
    (purged,) = purge_expired(config, queue, now=now + 1)
    assert purged.study_uid == study and purged.instances == 0
    assert not study_dir(config.storage, study).exists() and not aside.exists()
    assert [(p["instances"], p["received"], p["done"]) for p in queue.purges()] == [(2, 2, 1)]  # one row, its count
    assert queue.settled_before(now + 2) == []  # a finished purge is not looked at again


def _medseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=120)


def test_purge_command_refuses_without_retention_or_beside_a_running_service(shared: Path, tmp_path: Path) -> None:
    config = _config(tmp_path)
    queue = JobQueue(config.queue_path)
    _receive(shared, config, queue, "1.2.826.0.1.9.7", range(30, 32))
    _finish(config, queue, "1.2.826.0.1.9.7", "sent")
    path = tmp_path / "pacs.yaml"
    base = {"storage": str(config.storage), "destination": {"folder": str(tmp_path / "seg")}}
    path.write_text(yaml.safe_dump(base))
    unset = _medseg("pacs", "purge", "--config", str(path))
    assert unset.returncode == 2 and "retention.keep_days is not set" in unset.stderr
    assert len(unset.stderr.strip().splitlines()) == 1
    path.write_text(yaml.safe_dump(base | {"retention": {"keep_days": 0}}))
    with service_lock(config.storage):  # this process holds the storage as a running service does
        busy = _medseg("pacs", "purge", "--config", str(path))
        assert busy.returncode == 2 and "purges by itself" in busy.stderr
        listed = _medseg("pacs", "purge", "--config", str(path), "--dry-run")
        assert listed.returncode == 0 and "would delete the files of 1 study (2 instances)" in listed.stdout
    (config.storage / "serve.pid").write_text(str(os.getpid()))  # a pid file nobody holds is stale (review 18)
    done = _medseg("pacs", "purge", "--config", str(path))
    assert done.returncode == 0 and "deleted the files of 1 study (2 instances)" in done.stdout, done.stderr
    assert not study_dir(config.storage, "1.2.826.0.1.9.7").exists()


@pytest.mark.parametrize("keep_days", [-1, "soon"])
def test_bad_retention_is_a_config_error(tmp_path: Path, keep_days: object) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        PacsConfig(storage=tmp_path, destination={"folder": str(tmp_path)}, retention={"keep_days": keep_days})


@pytest.mark.slow
def test_the_running_service_purges_a_study_once_it_settled(
    shared: Path, tmp_path: Path, _isolated_audit_dir: Path
) -> None:
    """`medseg pacs serve` with retention: a study received over C-STORE, segmented and sent, then its files gone
    from storage by the service's own pass, the queue still saying `sent`, the purge on the audit trail."""
    import sqlite3

    from pacs_helpers import Served, make_study, storescu, wait_jobs, write_config

    study_src = tmp_path / "study"
    study, _ = make_study(chaos_files(shared), study_src, range(24, 52), "retention-service")
    config = tmp_path / "pacs.yaml"
    write_config(config, tmp_path / "store", {"folder": str(tmp_path / "seg")}, port=0,
                 retention={"keep_days": 0, "check_interval_s": 0.5})  # fmt: skip
    served = Served(config, 0, tmp_path / "serve.log").start()
    try:
        storescu(served.port, study_src)
        (job,) = wait_jobs(tmp_path / "store" / "queue.db", 1, states=("sent",), settled=True)
        deadline = time.monotonic() + 30
        while study_dir(tmp_path / "store", study).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        served.stop()
    assert not study_dir(tmp_path / "store", study).exists() and not results_dir(tmp_path / "store", job.id).exists()
    assert len(list((tmp_path / "seg").rglob("*.dcm"))) == 1  # the result the PACS got is untouched
    queue = JobQueue(tmp_path / "store" / "queue.db")
    assert queue.job(job.id).state == "sent" and [p["instances"] for p in queue.purges()] == [28]
    db = next(_isolated_audit_dir.glob("*.db"))
    assert "pacs.purge" in {r[0] for r in sqlite3.connect(db).execute("SELECT command FROM events")}
