"""The worker's end of a job whose study changed while it ran: refused input is quarantined only when it is still
the study's latest generation (the kill test once saw a half-written instance, left by the killed receiver, make
a job refuse its study; the complete study, received again, was then a newer job)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medseg.pacs.config import Destination, PacsConfig
from medseg.pacs.queue import JobQueue
from medseg.pacs.segment import load_segmenter
from medseg.pacs.worker import run_job


@pytest.fixture(scope="module")
def refused_study(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CT series with the first part of one of its files stored again under another name (what a write cut
    short leaves): the pipeline refuses the study."""
    study = tmp_path_factory.mktemp("refused") / "study"
    shutil.copytree(shared / "ct/chaos_ct_sample/dicom", study)
    (study / "again.dcm").write_bytes((study / "i0000,0000b.dcm").read_bytes()[:3000])
    return study


def _leased(q: JobQueue, study_uid: str, folder: Path):
    q.record_instance(f"{study_uid}.1", study_uid, f"{study_uid}.2", str(folder / "again.dcm"), "h1", 1, 0.0)
    job = q.complete_due(lambda _: str(folder))[0]
    lease = q.lease("w1", 600, job_id=job.id)
    assert lease is not None
    return lease


def test_refused_while_newer_instances_arrived_is_superseded_not_quarantined(refused_study: Path,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    config = PacsConfig(storage=tmp_path / "store", destination=Destination(folder=tmp_path / "sent"))
    segmenter = load_segmenter("liver")
    q = JobQueue(tmp_path / "q.db")

    lease = _leased(q, "1.2.826.0.1.1", refused_study)
    result = run_job(config, q, lease, segmenter)
    assert (result.state, q.job(lease.job.id).state) == ("quarantined", "quarantined")  # control: still the latest
    assert "duplicate slice position" in result.reason

    lease = _leased(q, "1.2.826.0.1.2", refused_study)
    q.record_instance("1.2.826.0.1.2.9", "1.2.826.0.1.2", "1.2.826.0.1.2.2", "late.dcm", "h9", 1, 60.0)
    result = run_job(config, q, lease, segmenter)
    job = q.job(lease.job.id)
    assert (result.state, job.state) == ("superseded", "superseded"), job.reason
    assert not list((tmp_path / "sent").glob("**/*.dcm"))


def test_the_service_start_sweeps_writes_a_killed_receiver_left(tmp_path: Path) -> None:
    import os
    import time

    from medseg.pacs.storage import durable_write, instance_path, sweep_unfinished_writes

    kept = instance_path(tmp_path, "1.2.3", "1.2.3.4", "1.2.3.4.5")
    durable_write(kept, b"instance")
    old = kept.with_name(".tmp-1.2.3.4.6.dcm-x1y2.dcm")
    fresh = kept.with_name(".tmp-1.2.3.4.7.dcm-z3w4.dcm")
    old.write_bytes(b"half")
    fresh.write_bytes(b"in progress")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert sweep_unfinished_writes(tmp_path) == [old]
    assert sorted(p.name for p in kept.parent.iterdir()) == sorted([kept.name, fresh.name])
