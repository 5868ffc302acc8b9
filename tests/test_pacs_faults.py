"""Fault tests with a real Orthanc: SIGKILL at chosen and random moments, Orthanc down during the send, a corrupt
study, the same study twice. After each: every acknowledged instance on disk, the job done, exactly one SEG."""

from __future__ import annotations

import io
import random
import re
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import NODELAY, QUIET_S, Orthanc, Served, chaos_files, make_study, storescu, wait_jobs, write_config

from medseg.pacs.queue import JobQueue
from medseg.pacs.worker import CRASH_ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), medseg_port=11112).start()
    yield server
    server.stop()


def _setup(orthanc: Orthanc, shared: Path, tmp_path: Path, seed: str, ks: range = range(30, 48)):
    orthanc.clear()
    study_src = tmp_path / "src"
    study, _series = make_study(chaos_files(shared), study_src, ks, seed)
    dest = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom}
    port = write_config(tmp_path / "pacs.yaml", tmp_path / "store", dest, lease_seconds=6)
    return study_src, study, port


def _one_seg(orthanc: Orthanc, study: str) -> None:
    ids = orthanc.seg_instances()
    assert len(ids) == 1 and len(orthanc.seg_series()) == 1, ids
    assert pydicom.dcmread(io.BytesIO(orthanc.instance_file(ids[0]))).StudyInstanceUID == study


@pytest.mark.parametrize("crash_at", ["after_inference", "after_send"])
def test_sigkill_at_a_step_then_restart_sends_exactly_one_seg(
    orthanc: Orthanc, shared: Path, tmp_path: Path, crash_at: str
) -> None:
    study_src, study, port = _setup(orthanc, shared, tmp_path, crash_at)
    config, log = tmp_path / "pacs.yaml", tmp_path / "serve.log"
    first = Served(config, port, log, env={CRASH_ENV: crash_at}).start()
    assert storescu(port, study_src).returncode == 0
    first.proc.wait(240)
    assert first.proc.returncode == -9  # it died at the crash point
    q = JobQueue(tmp_path / "store" / "queue.db")
    assert [j.state for j in q.jobs()] == ["running"] and q.ledger() == []
    if crash_at == "after_send":
        assert len(orthanc.seg_instances()) == 1  # sent, but the ledger never heard of it
    second = Served(config, port, log).start()
    try:
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1)
    finally:
        second.stop()
    assert [(j.state, j.attempts) for j in jobs] == [("sent", 2)]
    assert len(q.ledger()) == 1
    _one_seg(orthanc, study)


def test_sigkill_at_random_moments_during_receive_and_work(orthanc: Orthanc, shared: Path, tmp_path: Path) -> None:
    study_src, study, port = _setup(orthanc, shared, tmp_path, "random")
    config, log = tmp_path / "pacs.yaml", tmp_path / "serve.log"
    rng = random.Random(15)
    files = sorted(str(p) for p in study_src.glob("*.dcm"))
    service = Served(config, port, log).start()
    sender = subprocess.Popen(
        ["storescu", "-v", "-aec", "MEDSEG", "127.0.0.1", str(port), *files],
        env=NODELAY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(rng.uniform(0.05, 0.3))  # during receive
    service.kill()
    output = sender.communicate(timeout=120)[0]
    acknowledged = len(re.findall(r"Received Store Response \(Success\)", output))
    q = JobQueue(tmp_path / "store" / "queue.db")
    assert len(q.instances()) >= acknowledged  # every acknowledged instance was recorded (and is on disk)
    for row in q.instances():
        assert pydicom.dcmread(str(row["path"])).StudyInstanceUID == study
    service = Served(config, port, log).start()
    assert storescu(port, study_src).returncode == 0  # the sender retries its whole study
    time.sleep(rng.uniform(1.5, 8.0) + QUIET_S - 2.0)  # during completion, inference or sending (quiet was 2 s)
    service.kill()
    service = Served(config, port, log).start()
    try:
        storescu(port, study_src)
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1, settled=True)
    finally:
        service.stop()
    assert [j.state for j in jobs if j.state != "superseded"] == ["sent"], [(j.state, j.reason) for j in jobs]
    assert len(q.instances()) == len(files)
    _one_seg(orthanc, study)


def test_orthanc_down_during_send_retries_then_one_seg(orthanc: Orthanc, shared: Path, tmp_path: Path) -> None:
    study_src, study, port = _setup(orthanc, shared, tmp_path, "down")
    orthanc.stop()
    service = Served(tmp_path / "pacs.yaml", port, tmp_path / "serve.log").start()
    try:
        storescu(port, study_src)
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1, states=("pending",), timeout=240)
        assert "not established" in (jobs[0].reason or "")
        orthanc.start()
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1, timeout=120)
    finally:
        service.stop()
        if orthanc.proc is None:
            orthanc.start()
    assert jobs[0].state == "sent" and jobs[0].attempts >= 2
    _one_seg(orthanc, study)


def test_corrupt_study_is_quarantined_and_others_proceed(orthanc: Orthanc, shared: Path, tmp_path: Path) -> None:
    good_src, good, port = _setup(orthanc, shared, tmp_path, "good")
    bad_src = tmp_path / "bad"
    make_study(chaos_files(shared), bad_src, range(30, 40), "bad")
    victim = sorted(bad_src.glob("*.dcm"))[4]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # a slice with half its pixels
    ds.save_as(victim)
    service = Served(tmp_path / "pacs.yaml", port, tmp_path / "serve.log").start()
    try:
        storescu(port, bad_src)
        storescu(port, good_src)
        storescu(port, good_src)  # and the same study twice
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 2)
    finally:
        service.stop()
    by_state = {j.state: j for j in jobs}
    assert sorted(by_state) == ["quarantined", "sent"] and len(jobs) == 2
    assert "truncated pixel data" in (by_state["quarantined"].reason or "")
    assert by_state["sent"].study_uid == good
    _one_seg(orthanc, good)


def test_late_instances_get_a_new_seg_instance_in_the_same_series(
    orthanc: Orthanc, shared: Path, tmp_path: Path
) -> None:
    study_src, study, port = _setup(orthanc, shared, tmp_path, "late", ks=range(26, 54))
    files = sorted(study_src.glob("*.dcm"))
    early, late = tmp_path / "early", tmp_path / "late"
    for part, chosen in ((early, files[:20]), (late, files[20:])):
        part.mkdir()
        for f in chosen:
            (part / f.name).write_bytes(f.read_bytes())
    service = Served(tmp_path / "pacs.yaml", port, tmp_path / "serve.log").start()
    try:
        storescu(port, early)
        wait_jobs(tmp_path / "store" / "queue.db", 1)
        first = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc.seg_instances()[0])))
        storescu(port, late)  # the rest of the study, after it was processed
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 2)
    finally:
        service.stop()
    assert [(j.generation, j.state) for j in jobs] == [(1, "sent"), (2, "sent")]
    assert jobs[0].seg_series_uid == jobs[1].seg_series_uid  # one SEG series for the study and model
    assert jobs[0].seg_sop_uid != jobs[1].seg_sop_uid  # other content, another instance: never one UID for two
    segs = [pydicom.dcmread(io.BytesIO(orthanc.instance_file(i))) for i in orthanc.seg_instances()]
    final = next(s for s in segs if s.SOPInstanceUID == jobs[1].seg_sop_uid)
    refs = {r.ReferencedSOPInstanceUID for r in final.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert len(refs) == len(files) > len(first.ReferencedSeriesSequence[0].ReferencedInstanceSequence)
    assert {(s.StudyInstanceUID, s.SeriesInstanceUID) for s in segs} == {(study, jobs[1].seg_series_uid)}
    assert len(segs) == 2 and len(orthanc.seg_series()) == 1
