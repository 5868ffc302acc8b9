"""Review 19 of the PACS service and the Dask batch: each test reproduces one defect the review proved, against the
real components (the SQLite queue, the SCP's store path, `medseg` processes, a real Dask LocalCluster, real CHAOS CT
slices)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pydicom
import pytest
import yaml
from pacs_helpers import Served, chaos_files, free_port, make_study, write_config

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
def _completed_study(shared: Path, tmp_path: Path, study: str) -> tuple[PacsConfig, JobQueue, Any]:
    """A study of two stored instances, completed into a job and leased (the caller records what was sent)."""
    config = _config(tmp_path)
    queue = JobQueue(config.queue_path)
    for k in (30, 31):
        assert _store(shared, config, queue, study, k).status == SUCCESS
    queue.complete_due(lambda uid: str(study_dir(config.storage, uid)))
    return config, queue, queue.lease("test", 60.0)


def test_a_purge_keeps_an_instance_stored_while_its_trash_is_deleted(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After renaming the study folder aside under the lock, the purge deleted the trash AND the original path
    outside the lock: an instance of the same study acknowledged in between (a new folder at that path) was wiped."""
    study = "1.2.826.0.1.19.1"
    config, queue, lease = _completed_study(shared, tmp_path, study)
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


# 2. `pacs serve` with a Dask scheduler: refused at start when unreachable, and survives losing it later ---------------
def _medseg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_refuses_a_malformed_or_unreachable_scheduler(tmp_path: Path) -> None:
    """A typo or a cluster not up: the service started, acknowledged studies and never segmented them."""
    path = tmp_path / "pacs.yaml"
    base = {"listen": {"port": free_port(), "host": "127.0.0.1"}, "storage": str(tmp_path / "store"),
            "destination": {"folder": str(tmp_path / "seg")}}  # fmt: skip
    for address in ("not-an-address", f"tcp://127.0.0.1:{free_port()}"):
        path.write_text(yaml.safe_dump(base | {"scheduler": address}))
        done = _medseg("pacs", "serve", "--config", str(path))
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "scheduler" in line and "internal error" not in line


def test_dispatch_hands_back_and_reconnects_when_the_scheduler_is_lost(shared: Path, tmp_path: Path) -> None:
    """The scheduler killed while a job runs on it: the dispatch thread died (nothing segmented again, nothing said).
    Now the lease goes back to the queue, `pacs status` sees dispatch down, and the job runs once it is back."""
    from distributed import Client, LocalCluster

    from medseg.pacs.batch import batch_config, enqueue
    from medseg.pacs.dask_workers import dispatch, dispatch_down

    make_study(chaos_files(shared), tmp_path / "in" / "a", range(30, 46), "review19-dask")
    port = free_port()
    events: list[str] = []
    submitted = threading.Event()

    def on_event(message: str) -> None:
        events.append(message)
        if "submitted" in message:
            submitted.set()

    def cluster() -> LocalCluster:
        return LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                            scheduler_port=port)  # fmt: skip

    stop = threading.Event()
    with mock.patch.dict(os.environ):  # distributed's nannies change this process's environment
        first = cluster()
        with Client(first) as probe:
            (worker_pid,) = probe.run(os.getpid).values()
        os.kill(worker_pid, signal.SIGSTOP)  # the job cannot finish (and be committed) before the scheduler is lost
        config = batch_config(tmp_path / "out", "liver", None, "auto", first.scheduler_address)
        queue = enqueue(config, tmp_path / "in")
        runner = threading.Thread(target=dispatch, args=(config, queue, stop, on_event, []),
                                  kwargs={"reconnect": True})  # fmt: skip
        runner.start()
        try:
            assert submitted.wait(60)
            os.kill(worker_pid, signal.SIGKILL)
            first.close()
            deadline = time.monotonic() + 45
            while dispatch_down(config.storage) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert dispatch_down(config.storage) is not None, events
            assert runner.is_alive() and queue.jobs()[0].state == "queued"
            assert any(m.startswith("dispatch: lost the Dask scheduler") and "job 1 handed back" in m for m in events)
            with cluster():
                deadline = time.monotonic() + 90
                while queue.jobs()[0].state != "sent" and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert queue.jobs()[0].state == "sent", events
                assert dispatch_down(config.storage) is None
        finally:
            stop.set()
            runner.join(60)
    assert not runner.is_alive()


# 3. queue.db deleted under a running service -------------------------------------------------------------------------
def _pynetdicom_store(port: int, datasets: list[bytes]) -> list[int]:
    """C-STORE each encoded instance over one real pynetdicom association; the statuses answered."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status) for data in datasets]
    assoc.release()
    return statuses


def _receiving(tmp_path: Path) -> tuple[object, JobQueue, int, PacsConfig]:
    from medseg.pacs.scp import Receiver

    config = PacsConfig(listen={"ae_title": "MEDSEG", "host": "127.0.0.1", "port": free_port()},
                        storage=tmp_path / "store", destination={"folder": str(tmp_path / "seg")})  # fmt: skip
    queue = JobQueue(config.queue_path)
    receiver = Receiver(config, queue)
    return receiver, queue, receiver.start(), config


def test_a_deleted_queue_is_never_recreated_and_stores_are_refused_leaving_no_file(shared: Path,
                                                                                   tmp_path: Path) -> None:  # fmt: skip
    """sqlite created a fresh empty queue.db on the next connection: C-STOREs were acknowledged into it (lost on the
    next restart, their files never purged). Now a new connection to a missing queue fails: A700, no file kept."""
    from medseg.pacs.queue import QueueGone

    receiver, queue, port, config = _receiving(tmp_path)
    study = "1.2.826.0.1.19.3"
    try:
        assert _pynetdicom_store(port, [_instance(shared, study, 30)[0]]) == [SUCCESS]
        for f in config.storage.glob("queue.db*"):
            f.unlink()
        with pytest.raises(QueueGone, match="deleted"):
            queue.check_file()
        assert _pynetdicom_store(port, [_instance(shared, study, 31)[0]]) == [0xA700]
    finally:
        receiver.stop()  # type: ignore[attr-defined]
    assert not config.queue_path.exists()
    assert [p.name for p in study_dir(config.storage, study).rglob("*.dcm")] == [f"{study}.1.30.dcm"]


def test_the_service_stops_with_exit_4_when_its_queue_file_is_deleted(tmp_path: Path) -> None:
    """The scheduler's tick compares queue.db's inode with the one opened: gone, the service logs one line and ends
    with exit 4 instead of serving on."""
    log = tmp_path / "serve.log"
    write_config(tmp_path / "pacs.yaml", tmp_path / "store", {"folder": str(tmp_path / "seg")}, port=0)
    served = Served(tmp_path / "pacs.yaml", 0, log).start()
    try:
        for f in (tmp_path / "store").glob("queue.db*"):
            f.unlink()
        assert served.proc is not None
        assert served.proc.wait(60) == 4
    finally:
        served.kill()
    assert not (tmp_path / "store" / "queue.db").exists()
    lines = [line for line in log.read_text().splitlines() if "queue file was deleted" in line]
    assert lines and lines[0].startswith("stopping:") and "internal error" not in log.read_text()


# 4. a C-STORE refused because the queue could not record it leaves no file ------------------------------------------
def test_a_store_the_queue_cannot_record_leaves_no_file_and_keeps_the_earlier_one(shared: Path,
                                                                                  tmp_path: Path) -> None:  # fmt: skip
    """The queue locked (a backup tool holding it): A700 answered, but the new file stayed in the study folder and
    became the job's input; a re-send that replaced an earlier file left the refused bytes in its place."""
    import sqlite3

    config = _config(tmp_path)
    queue = JobQueue(config.queue_path, busy_timeout_s=0.5)
    study = "1.2.826.0.1.19.4"
    first, sop = _instance(shared, study, 30)
    assert store_instance(first, sop, "PACS", config.storage, queue, 0.0).status == SUCCESS
    path = Path(str(queue.instances(study)[0]["path"]))
    other = sqlite3.connect(config.queue_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        new, new_sop = _instance(shared, study, 31)
        assert store_instance(new, new_sop, "PACS", config.storage, queue, 0.0).status == 0xA700
        changed = _instance(shared, study, 32)[0]  # other bytes under the first SOP Instance UID
        assert store_instance(changed, sop, "PACS", config.storage, queue, 0.0).status == 0xA700
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert sorted(p.name for p in study_dir(config.storage, study).rglob("*")  if p.is_file()) == [path.name]
    assert path.read_bytes() == first


# 6. `medseg batch --scheduler`: a bad or unreachable scheduler is one line, never "internal error ... report it" ------
def test_batch_refuses_a_malformed_scheduler_before_queueing_and_an_unreachable_one_in_one_line(
    shared: Path, tmp_path: Path
) -> None:
    make_study(chaos_files(shared), tmp_path / "in" / "a", range(30, 34), "review19-batch")
    bad = _medseg("batch", str(tmp_path / "in"), "--out", str(tmp_path / "out1"), "--scheduler", "not-an-address")
    (line,) = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and "--scheduler" in line and not (tmp_path / "out1" / "queue.db").exists()
    address = f"tcp://127.0.0.1:{free_port()}"
    down = _medseg("batch", str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--scheduler", address)
    (line,) = down.stderr.strip().splitlines()
    assert down.returncode == 4 and "cannot reach the Dask scheduler" in line and "run the same" in line
    assert "internal error" not in line
    assert [(j.state, j.attempts) for j in JobQueue(tmp_path / "out2" / "queue.db").jobs()] == [("queued", 0)]


def test_batch_hands_back_its_jobs_and_exits_4_when_the_scheduler_is_lost(shared: Path, tmp_path: Path) -> None:
    """The scheduler killed mid-batch ended in 'internal error ... report it' with the job left running (leased)."""
    from distributed import Client, LocalCluster

    from medseg.errors import ProcessingError
    from medseg.pacs.batch import batch_config, enqueue, run_batch

    make_study(chaos_files(shared), tmp_path / "in" / "a", range(30, 46), "review19-lost")
    with mock.patch.dict(os.environ):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
        try:
            with Client(cluster) as probe:
                (worker_pid,) = probe.run(os.getpid).values()
            os.kill(worker_pid, signal.SIGSTOP)  # the job cannot be committed before the scheduler is lost
            config = batch_config(tmp_path / "out", "liver", None, "auto", cluster.scheduler_address)
            queue = enqueue(config, tmp_path / "in")

            def on_event(message: str) -> None:
                if "submitted" in message:
                    os.kill(worker_pid, signal.SIGKILL)
                    cluster.close()

            with pytest.raises(ProcessingError, match="lost the Dask scheduler") as raised:
                run_batch(config, queue, on_event)
        finally:
            cluster.close()
    assert raised.value.exit_code == 4 and "run the same `medseg batch` again" in raised.value.one_line()
    assert [(j.state, j.attempts, j.lease_owner) for j in queue.jobs()] == [("queued", 0, None)]


# 5. refused C-STOREs leave a trace: one log line each and a persisted count in `pacs status` -------------------------
def test_refused_stores_are_logged_and_counted_in_status(shared: Path, tmp_path: Path) -> None:
    """Below min_free_mb every C-STORE was answered A700 and nothing on medseg's side said so."""
    import json

    from medseg.pacs.scp import Receiver

    storage = tmp_path / "store"
    raw = {"listen": {"ae_title": "MEDSEG", "host": "127.0.0.1", "port": free_port()}, "storage": str(storage),
           "destination": {"folder": str(tmp_path / "seg")}, "min_free_mb": 10**9}  # fmt: skip
    (tmp_path / "pacs.yaml").write_text(yaml.safe_dump(raw))
    config = PacsConfig.model_validate(raw)
    events: list[str] = []
    receiver = Receiver(config, JobQueue(config.queue_path), events.append)
    port = receiver.start()
    study = "1.2.826.0.1.19.5"
    try:
        assert _pynetdicom_store(port, [_instance(shared, study, k)[0] for k in (30, 31)]) == [0xA700, 0xA700]
    finally:
        receiver.stop()
    assert events == ["C-STORE from PACS refused: A700 (storage below min_free_mb)"] * 2
    shown = _medseg("pacs", "status", "--config", str(tmp_path / "pacs.yaml"), "--json")
    report = json.loads(shown.stdout)
    assert report["counts"]["refused"] == 2
    assert (report["refused"]["last_status"], report["refused"]["last_reason"]) == ("A700", "storage below min_free_mb")
    text = _medseg("pacs", "status", "--config", str(tmp_path / "pacs.yaml")).stdout
    assert "2 refused" in text and "C-STOREs refused: 2" in text and study not in text


# 8. `pacs retry` refused is audited as failed; an unknown job id says "no such job" -----------------------------------
def test_a_refused_retry_is_audited_as_failed_and_an_unknown_job_is_named(tmp_path: Path) -> None:
    import json

    storage = tmp_path / "store"
    queue = JobQueue(storage / "queue.db")
    job = queue.add_job("1.2.826.0.1.19.8", str(tmp_path / "nowhere"))
    (tmp_path / "pacs.yaml").write_text(yaml.safe_dump({"storage": str(storage),
                                                       "destination": {"folder": str(tmp_path / "seg")}}))  # fmt: skip
    unknown = _medseg("pacs", "retry", "999", "--config", str(tmp_path / "pacs.yaml"))
    assert unknown.returncode == 2 and "no such job: 999" in unknown.stderr
    queued = _medseg("pacs", "retry", str(job.id), "--config", str(tmp_path / "pacs.yaml"))
    assert queued.returncode == 2 and f"job {job.id} is queued" in queued.stderr
    events = json.loads(_medseg("audit", "show", "--json").stdout)
    retries = [e for e in events if e["command"] == "pacs.retry"]
    assert len(retries) == 2 and all(e["outcome"] != "success" for e in retries), retries


# 9. an expired CA among the trusted certificates stops the service at start -------------------------------------------
def _expired_ca(folder: Path) -> Path:
    """A self-signed CA certificate whose validity ended yesterday, PEM."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Expired CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256())
    )  # fmt: skip
    path = folder / "expired-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_an_expired_trusted_ca_stops_the_service_at_start_with_exit_2(tmp_path: Path) -> None:
    """Only the service's own certificate was date-checked: with an expired CA as trusted_certificates it started
    and refused every sender, even one with a valid certificate."""
    from tls_pki import make_pki

    from medseg.errors import UsageError
    from medseg.pacs.config import load_config

    pki = make_pki(tmp_path / "pki")
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(pki.ca.read_bytes() + _expired_ca(tmp_path).read_bytes())
    for where in ("listen", "destination"):
        tls = {"certificate": str(pki.service.cert), "private_key": str(pki.service.key),
               "trusted_certificates": str(bundle)}  # fmt: skip
        sections = {"listen": {"port": free_port()}, "destination": {"ae_title": "PACS", "host": "127.0.0.1",
                                                                      "port": free_port()}}  # fmt: skip
        sections[where] = sections[where] | {"tls": tls}
        (tmp_path / "pacs.yaml").write_text(yaml.safe_dump(sections | {"storage": str(tmp_path / "s")}))
        with pytest.raises(UsageError, match=f"{where}.tls.trusted_certificates: trusted certificate CN=Expired CA "
                                             "expired on") as err:  # fmt: skip
            load_config(tmp_path / "pacs.yaml")
        assert err.value.exit_code == 2


# 7. on Dask, each job's audit facts reach the batch's own trail ------------------------------------------------------
def test_a_dask_batch_records_each_job_and_its_seg_in_the_batch_hosts_audit_trail(shared: Path, tmp_path: Path) -> None:
    """Workers started with their own MEDSEG_AUDIT_DIR (another host, a systemd unit): the job records and the SEGs
    landed only in the workers' trail; the batch's record named no output."""
    import hashlib
    import json

    from distributed import LocalCluster

    make_study(chaos_files(shared), tmp_path / "in" / "a", range(30, 46), "review19-audit")
    worker_trail = tmp_path / "worker-audit"
    with mock.patch.dict(os.environ), LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                                   dashboard_address=None,
                                                   env={"MEDSEG_AUDIT_DIR": str(worker_trail)}) as cluster:  # fmt: skip
        done = _medseg("batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--scheduler",
                       cluster.scheduler_address, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (seg,) = (tmp_path / "out" / "seg").rglob("*.dcm")
    digest = hashlib.sha256(seg.read_bytes()).hexdigest()
    assert worker_trail.is_dir()  # the worker wrote its own record elsewhere
    events = json.loads(_medseg("audit", "show", "--json").stdout)
    (job,) = [e for e in events if e["command"] == "pacs.job.dask"]
    assert job["outcome_detail"] == "sent" and digest in [o["sha256"] for o in job["outputs"]]
    assert job["model"] is not None and job["params"]["worker"]
    (batch,) = [e for e in events if e["command"] == "batch"]
    assert digest in [o["sha256"] for o in batch["outputs"]]


# 10. `pacs purge --dry-run` lists each study with its folders and counts ----------------------------------------------
def test_purge_dry_run_lists_each_study_its_folders_and_counts(shared: Path, tmp_path: Path) -> None:
    """'List what would be deleted' printed only a total: nothing said which study or folders would go. The study is
    named by its Study Instance UID, as `pacs status` names studies (`--json` jobs and receiving rows)."""
    from medseg.pacs.storage import results_dir

    study = "1.2.826.0.1.19.10"
    config, queue, lease = _completed_study(shared, tmp_path, study)
    results_dir(config.storage, lease.job.id).mkdir(parents=True)
    queue.record_sent(lease, "folder:x", "key", "1.2.3")
    path = tmp_path / "pacs.yaml"
    path.write_text(yaml.safe_dump({"storage": str(config.storage), "destination": {"folder": str(tmp_path / "seg")},
                                    "retention": {"keep_days": 0}}))  # fmt: skip
    listed = _medseg("pacs", "purge", "--config", str(path), "--dry-run")
    assert listed.returncode == 0, listed.stderr
    line = f"  would delete study {study}: 2 instance(s), 2 folder(s): studies/{study}, results/job-{lease.job.id}"
    assert line in listed.stdout.splitlines()
    assert study_dir(config.storage, study).is_dir()  # nothing deleted


# Re-probe (nineteenth session) --------------------------------------------------------------------------------------


def test_two_storages_on_one_scheduler_each_get_their_own_job(shared: Path, tmp_path: Path) -> None:
    """Two batches (or a service and a batch) of different storages on one Dask scheduler: both submitted their job 1
    under one task key, the scheduler ran one of them, and the other storage recorded its SEG as sent."""
    from distributed import LocalCluster

    for name in ("a", "b"):
        make_study(chaos_files(shared), tmp_path / name / "in" / "s", range(30, 46), f"review19-key-{name}")
    with mock.patch.dict(os.environ), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                   dashboard_address=None) as cluster:  # fmt: skip
        procs = [subprocess.Popen([sys.executable, "-m", "medseg", "batch", str(tmp_path / name / "in"), "--out",
                                   str(tmp_path / name / "out"), "--scheduler", cluster.scheduler_address],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in ("a", "b")]  # fmt: skip
        results = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    for name in ("a", "b"):
        (seg,) = (tmp_path / name / "out" / "seg").rglob("*.dcm")
        source = pydicom.dcmread(next((tmp_path / name / "in" / "s").iterdir()), stop_before_pixels=True)
        assert pydicom.dcmread(seg, stop_before_pixels=True).StudyInstanceUID == source.StudyInstanceUID, name


def test_a_write_after_the_queue_file_was_deleted_is_refused_on_an_open_connection(tmp_path: Path) -> None:
    """An association's connection was already open: C-STOREs were acknowledged into the deleted file for up to a
    scheduler tick. Every write checks the file first."""
    from medseg.pacs.queue import QueueGone

    config = PacsConfig.model_validate({"listen": {"port": free_port()}, "storage": str(tmp_path / "store"),
                                        "destination": {"folder": str(tmp_path / "seg")}})  # fmt: skip
    queue = JobQueue(config.queue_path)
    queue.open_jobs()  # the connection is open
    for f in config.storage.glob("queue.db*"):
        f.unlink()
    with pytest.raises(QueueGone, match="deleted"), queue._write():
        pass
