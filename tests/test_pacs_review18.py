"""Review 18 of the PACS service: each test reproduces one defect the integration review proved, against the real
components (pynetdicom associations, the SQLite queue, `medseg pacs` processes, the real CHAOS CT slices)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pacs_helpers import Served, chaos_files, free_port, make_study, write_config

from medseg.pacs.config import Destination, PacsConfig
from medseg.pacs.queue import Backoff, JobQueue
from medseg.pacs.segment import load_segmenter
from medseg.pacs.worker import run_job


@pytest.fixture(scope="module")
def small_study(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """16 real CT slices as one study (about 1 s of inference here): (folder, study UID, series UID)."""
    folder = tmp_path_factory.mktemp("review18") / "study"
    study, series = make_study(chaos_files(shared), folder, range(30, 46), "review18")
    return folder, study, series


# 1. an unexpected error is a failed attempt, never an endless loop ---------------------------------------------------
def test_unexpected_error_at_send_ends_failed_after_max_attempts(small_study: tuple[Path, str, str],
                                                                 tmp_path: Path) -> None:  # fmt: skip
    """A destination AE title pynetdicom refuses only when it sends ("DE\\ST", now refused when the config is read,
    built here past the check) raised ValueError out of run_job: the job stayed running, leased again for ever."""
    folder, study, _series = small_study
    with pytest.raises(ValueError, match="AE title"):
        Destination(ae_title="DE\\ST", host="127.0.0.1", port=104)
    dest = Destination.model_construct(ae_title="DE\\ST", host="127.0.0.1", port=free_port(), dicomweb=None,
                                       folder=None, timeout_s=5.0, tls=None)  # fmt: skip
    config = PacsConfig(storage=tmp_path / "store", destination=dest, retry={"base_s": 1, "max_attempts": 2})
    q = JobQueue(config.queue_path)
    q.add_job(study, str(folder))
    segmenter = load_segmenter(["liver"])
    first = run_job(config, q, q.lease("w", 60), segmenter)
    assert first.state == "pending" and "internal error: ValueError" in (first.reason or "")
    second = run_job(config, q, q.lease("w", 60, now=q.job(1).not_before + 1), segmenter)
    job = q.job(1)
    assert (second.state, job.state, job.attempts, job.lease_owner) == ("failed", "failed", 2, None)
    assert "ValueError" in (job.reason or "")


def test_a_lease_that_keeps_expiring_ends_failed(tmp_path: Path) -> None:
    """A holder that dies or hangs on every attempt: the expired lease was taken back without looking at attempts."""
    q = JobQueue(tmp_path / "q.db")
    q.add_job("1.2.3", "/nowhere", now=0.0)
    backoff = Backoff(max_attempts=2, failed_retry_after_s=100.0)
    assert q.lease("a", 10, now=1.0, backoff=backoff).job.attempts == 1
    assert q.lease("b", 10, now=20.0, backoff=backoff).job.attempts == 2  # a's lease expired: attempt 2
    assert q.lease("c", 10, now=40.0, backoff=backoff) is None  # b's expired too, the last attempt
    job = q.job(1)
    assert (job.state, job.attempts, job.lease_owner, job.not_before) == ("failed", 2, None, 140.0)
    assert "lease expired" in (job.reason or "")
    assert q.requeue_failed(backoff, now=141.0) == 1  # a new round after the cool-down, as for any failed job


# 2. the same instances in other bytes are duplicates; other content under the same UIDs gets a SEG UID of its own ---
def _receiver(storage: Path, quiet: float = 0.2):
    from medseg.pacs.scp import Receiver

    config = PacsConfig(listen={"ae_title": "MEDSEG", "host": "127.0.0.1", "port": free_port()}, storage=storage,
                        destination={"folder": str(storage.parent / "sent")},
                        completion={"quiet_seconds": quiet})  # fmt: skip
    queue = JobQueue(config.queue_path)
    receiver = Receiver(config, queue)
    return receiver, queue, receiver.start()


def _store(port: int, folder: Path, syntax: str, **changes: str) -> set[int]:
    """C-STORE every file of `folder` in one pynetdicom association offering only `syntax`; the statuses answered."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
    assert assoc.is_established
    statuses = set()
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        statuses.add(int(assoc.send_c_store(ds).Status))
    assoc.release()
    return statuses


def _complete(queue: JobQueue, storage: Path) -> list:
    from medseg.pacs.storage import study_dir

    return queue.complete_due(lambda uid: str(study_dir(storage, uid)), now=9e12)


def test_same_instances_in_another_transfer_syntax_are_duplicates(small_study: tuple[Path, str, str],
                                                                  tmp_path: Path) -> None:  # fmt: skip
    """The PACS forwarding the study again as explicit VR: the bytes differ, the content not; it reopened the study
    and made a second SEG under the first one's SOP Instance UID."""
    folder, study, _ = small_study
    receiver, queue, port = _receiver(tmp_path / "store")
    try:
        assert _store(port, folder, "1.2.840.10008.1.2") == {0}
        assert len(_complete(queue, tmp_path / "store")) == 1
        first = {r["sop_uid"]: r["sha256"] for r in queue.instances(study)}
        assert _store(port, folder, "1.2.840.10008.1.2.1") == {0}
    finally:
        receiver.stop()
    rows = queue.instances(study)
    assert len(rows) == 16 and all(first[r["sop_uid"]] != r["sha256"] for r in rows)  # other bytes, rows follow them
    assert [(s["state"], s["generation"]) for s in queue.studies()] == [("complete", 1)]
    assert _complete(queue, tmp_path / "store") == [] and len(queue.jobs()) == 1


def test_corrected_study_gets_a_seg_sop_uid_of_its_own(small_study: tuple[Path, str, str], tmp_path: Path) -> None:
    """The study sent again with the patient's name corrected (same SOP Instance UIDs): generation 2, whose SEG had
    the first SEG's SOP Instance UID (the key held only UIDs): two different objects under one UID at the PACS."""
    folder, study, _ = small_study
    storage = tmp_path / "store"
    receiver, queue, port = _receiver(storage)
    segmenter = load_segmenter(["liver"])
    config = receiver.config
    try:
        assert _store(port, folder, "1.2.840.10008.1.2", PatientName="WRONG^PATIENT") == {0}
        (job1,) = _complete(queue, storage)
        assert run_job(config, queue, queue.lease("w", 60, job_id=job1.id), segmenter).state == "sent"
        assert _store(port, folder, "1.2.840.10008.1.2", PatientName="RIGHT^PATIENT") == {0}
    finally:
        receiver.stop()
    (job2,) = _complete(queue, storage)
    assert job2.generation == 2
    assert run_job(config, queue, queue.lease("w", 60, job_id=job2.id), segmenter).state == "sent"
    one, two = queue.job(job1.id), queue.job(job2.id)
    assert one.seg_series_uid == two.seg_series_uid and one.seg_sop_uid != two.seg_sop_uid
    assert len(list((tmp_path / "sent" / study).glob("*.dcm"))) == 2


# 3, 5. the storage's service lock: a second serve refused, a stale pid file never signals a stranger ---------------
def _medseg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=timeout)


def _status(config: Path) -> dict:
    done = _medseg("pacs", "status", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_second_serve_on_the_same_storage_is_refused_and_loses_nothing(tmp_path: Path) -> None:
    """The second start overwrote serve.pid, failed to bind ('internal error ... report it', exit 4), and status, stop
    and purge then lost the service that still ran."""
    config = tmp_path / "pacs.yaml"
    port = write_config(config, tmp_path / "store", {"folder": str(tmp_path / "segs")})
    served = Served(config, port, tmp_path / "serve.log").start()
    try:
        pid = served.proc.pid
        second = _medseg("pacs", "serve", "--config", str(config))
        assert second.returncode == 2, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and f"(pid {pid}) runs on this storage" in second.stderr
        assert (tmp_path / "store" / "serve.pid").read_text() == str(pid)
        assert _status(config)["service_pid"] == pid
        other = tmp_path / "other.yaml"  # another storage, the same port: the port in use is a config error
        write_config(other, tmp_path / "store2", {"folder": str(tmp_path / "segs")})
        other.write_text(other.read_text().replace(f"port: {yaml.safe_load(other.read_text())['listen']['port']}",
                                                   f"port: {port}"))  # fmt: skip
        busy = _medseg("pacs", "serve", "--config", str(other))
        assert busy.returncode == 2 and "listen.port" in busy.stderr and "in use" in busy.stderr, busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "store2" / "serve.pid").exists()
        stopped = _medseg("pacs", "stop", "--config", str(config))
        assert stopped.returncode == 0 and f"stopped (pid {pid})" in stopped.stdout, stopped.stderr
        assert served.proc.wait(30) == 0
    finally:
        served.stop()
    assert not (tmp_path / "store" / "serve.pid").exists()


def test_a_stale_pid_file_never_signals_another_process(tmp_path: Path) -> None:
    """A service killed with -9 leaves serve.pid; its pid given to another program was SIGTERMed by `pacs stop`."""
    config = tmp_path / "pacs.yaml"
    write_config(config, tmp_path / "store", {"folder": str(tmp_path / "segs")})
    JobQueue(tmp_path / "store" / "queue.db").close()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "store" / "serve.pid").write_text(str(stranger.pid))
        assert _status(config)["service_pid"] is None
        stop = _medseg("pacs", "stop", "--config", str(config), "--wait", "2")
        assert stop.returncode == 2 and "no service is running" in stop.stderr
        assert stranger.poll() is None  # not signalled
    finally:
        stranger.kill()
        stranger.wait(30)


# 4. idle connections cannot lock the senders out ----------------------------------------------------------------------
def _echo(port: int, tls: tuple | None = None) -> bool:
    """A real association (C-ECHO) from a pynetdicom SCU; whether it was accepted and answered success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG", tls_args=tls)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """Whether the service closes this idle connection within `within_s` seconds."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("with_tls", [False, True])
def test_idle_connections_do_not_lock_senders_out(tmp_path: Path, with_tls: bool,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:  # fmt: skip
    """10 sockets that never send took pynetdicom's 10 association slots for its 30 s ACSE timeout: every real
    sender was rejected, on the TLS port too."""
    from tls_pki import make_pki

    from medseg.pacs.scp import Receiver
    from medseg.pacs.tls import client_context

    listen: dict = {"port": free_port()}
    tls = None
    if with_tls:
        pki = make_pki(tmp_path_factory.mktemp("pki"))
        listen["tls"] = {"certificate": str(pki.service.cert), "private_key": str(pki.service.key),
                         "trusted_certificates": str(pki.ca)}  # fmt: skip
        client = {"certificate": pki.client.cert, "private_key": pki.client.key, "trusted_certificates": pki.ca,
                  "server_name": "localhost"}  # fmt: skip
        tls = (client_context(Destination(ae_title="X", host="localhost", port=1, tls=client).tls), "localhost")
    assert (PacsConfig(storage=tmp_path, destination={"folder": "x"}).listen.max_associations) == 64
    listen["association_timeout_s"] = 4.0  # the default is 10 s; shorter here to keep the test quick
    config = PacsConfig(listen=listen, storage=tmp_path / "store", destination={"folder": str(tmp_path / "out")})
    receiver = Receiver(config, JobQueue(config.queue_path))
    port = receiver.start()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
    try:
        deadline = time.monotonic() + 30
        while len(receiver.server.active_associations) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)  # each idle socket accepted and holding a slot before the real sender comes
        assert len(receiver.server.active_associations) >= 12
        assert _echo(port, tls)
        assert all(_closed_by_peer(s, 30) for s in idle)  # dropped after association_timeout_s, not held for ever
    finally:
        for s in idle:
            s.close()
        receiver.stop()


@pytest.mark.parametrize(("key", "title"), [("listen.ae_title", "MÉDSEG"), ("listen.allowed_callers", "MÖDALITY"),
                                            ("destination.ae_title", "DÉST")])  # fmt: skip
def test_a_non_ascii_ae_title_is_refused_when_the_config_is_read(tmp_path: Path, key: str, title: str) -> None:
    """A re-probe got 'internal error: ValueError ... ASCII' (exit 4) at start, or a config that fails at send."""
    config = tmp_path / "pacs.yaml"
    write_config(config, tmp_path / "store", {"folder": str(tmp_path / "segs")})
    data = yaml.safe_load(config.read_text())
    section, field = key.split(".")
    data.setdefault(section, {})[field] = [title] if field == "allowed_callers" else title
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    done = _medseg("pacs", "status", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and key in done.stderr and "ASCII" in done.stderr, done.stderr


# 9. a listen AE title PS3.5 does not allow is a config error ----------------------------------------------------------
@pytest.mark.parametrize("title", ["", "   ", "MED\\SEG", "MED\tSEG"])
def test_an_invalid_listen_ae_title_is_refused_naming_the_key(tmp_path: Path, title: str) -> None:
    """pynetdicom refused it at start: 'internal error ... report it' (exit 4), and a pid file was left behind."""
    config = tmp_path / "pacs.yaml"
    write_config(config, tmp_path / "store", {"folder": str(tmp_path / "segs")})
    data = yaml.safe_load(config.read_text())
    data["listen"]["ae_title"] = title
    config.write_text(yaml.safe_dump(data))
    done = _medseg("pacs", "serve", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "listen.ae_title" in done.stderr
    assert not (tmp_path / "store" / "serve.pid").exists()


# 6. stored with a warning is stored --------------------------------------------------------------------------------
def _warning_scp(status: int) -> tuple[object, int, list]:
    """A real pynetdicom storage SCP answering every C-STORE with `status`; (server, port, SOP UIDs received)."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    received: list = []

    def on_store(event: object) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))  # type: ignore[attr-defined]
        return status

    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return server, int(server.server_address[1]), received


def test_c_store_warning_0107_is_stored_once(small_study: tuple[Path, str, str], tmp_path: Path) -> None:
    """0107 (attribute list error, stored) was not in a list of four codes: the SEG was sent twice, the job failed."""
    folder, study, _ = small_study
    server, port, received = _warning_scp(0x0107)
    try:
        dest = Destination(ae_title="PACS", host="127.0.0.1", port=port, timeout_s=20)
        config = PacsConfig(storage=tmp_path / "store", destination=dest, retry={"base_s": 1, "max_attempts": 2})
        q = JobQueue(config.queue_path)
        q.add_job(study, str(folder))
        result = run_job(config, q, q.lease("w", 60), load_segmenter(["liver"]))
    finally:
        server.shutdown()
    job = q.job(1)
    assert (result.state, job.state, len(received), len(q.ledger())) == ("sent", "sent", 1, 1)
    assert job.reason == "stored with a warning: C-STORE status 0x0107"


class _Stow:
    """A real HTTP server answering every STOW-RS POST with (code, JSON body); counts the POSTs."""

    def __init__(self, code: int, reply: dict) -> None:
        import http.server
        import threading

        self.posts = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                body = json.dumps(reply).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stow_202_with_warning_is_stored_and_with_failures_is_not(shared: Path) -> None:
    """STOW-RS 202 with a WarningReason and no FailedSOPSequence was taken for a failure: 2 POSTs, then failed."""
    from medseg.pacs.send import SendError, send

    instance = chaos_files(shared)[40]
    warned = {"00081199": {"vr": "SQ", "Value": [{"00081196": {"vr": "US", "Value": [45056]}}]}}
    stow = _Stow(202, warned)
    try:
        how = send(instance, Destination(dicomweb=stow.url), "MEDSEG")
    finally:
        stow.close()
    assert how == "stored with a warning: STOW-RS HTTP 202 (WarningReason 0xB000)" and stow.posts == 1
    failed = _Stow(202, warned | {"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [272]}}]}})
    try:
        with pytest.raises(SendError, match="FailedSOPSequence"):
            send(instance, Destination(dicomweb=failed.url), "MEDSEG")
    finally:
        failed.close()


# 7. a study of non-image objects only is audited, shown and purged ---------------------------------------------------
def test_a_study_of_non_image_objects_is_audited_shown_and_purged(shared: Path, tmp_path: Path,
                                                                  _isolated_audit_dir: Path) -> None:  # fmt: skip
    """An RT structure set alone was stored with its patient data, but never audited and never shown in status."""
    import sqlite3

    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import RTStructureSetStorage  # type: ignore[attr-defined]

    from medseg.pacs.retention import purge_expired
    from medseg.pacs.scp import store_instance
    from medseg.pacs.service import complete_studies
    from medseg.pacs.status import status
    from medseg.pacs.storage import study_dir

    rt = pydicom.dcmread(shared / "dicom/rtstruct/rt-utils/mock_data/rt.dcm")
    receiver, queue, port = _receiver(tmp_path / "store", quiet=0.2)
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(RTStructureSetStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
        assert int(assoc.send_c_store(rt).Status) == 0
        assoc.release()
    finally:
        receiver.stop()
    config = PacsConfig.model_validate(receiver.config.model_dump() | {"retention": {"keep_days": 0}})
    deadline = time.monotonic() + 30
    while not queue.unaudited_not_input(0.2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert complete_studies(config, queue) == [] and complete_studies(config, queue) == []  # audited once, no job
    db = next(_isolated_audit_dir.glob("*.db"))
    bodies = [json.loads(b) for (b,) in sqlite3.connect(db).execute(
        "SELECT body FROM events WHERE command='pacs.receive' AND kind='end'")]  # fmt: skip
    assert len(bodies) == 1 and "not input" in json.dumps(bodies[0])
    assert str(rt.PatientName) not in json.dumps(bodies)
    report = status(queue)
    assert report["counts"]["not_input"] == 1
    assert [(s["study"], s["instances"]) for s in report["not_input"]] == [(str(rt.StudyInstanceUID), 1)]
    assert len(purge_expired(config, queue, now=time.time() + 1)) == 1
    assert not study_dir(config.storage, str(rt.StudyInstanceUID)).exists()
    assert status(queue)["counts"]["not_input"] == 0
    data = (shared / "dicom/rtstruct/rt-utils/mock_data/rt.dcm").read_bytes()  # sent again after the purge
    assert store_instance(data, str(rt.SOPInstanceUID), "PACS", config.storage, queue, 0.0).status == 0
    deadline = time.monotonic() + 30
    while not queue.unaudited_not_input(0.2) and time.monotonic() < deadline:
        time.sleep(0.1)
    complete_studies(config, queue)
    assert len(list(sqlite3.connect(db).execute(
        "SELECT 1 FROM events WHERE command='pacs.receive' AND kind='end'"))) == 2  # fmt: skip


# 10. a job whose holder was killed is shown orphaned and can be retried ----------------------------------------------
def test_a_job_whose_holder_was_killed_is_orphaned_and_retried(tmp_path: Path) -> None:
    """After kill -9 during a job, status showed it 'running' with nobody holding it and `pacs retry` refused it."""
    config = tmp_path / "pacs.yaml"
    write_config(config, tmp_path / "store", {"folder": str(tmp_path / "segs")})
    queue_path = tmp_path / "store" / "queue.db"
    JobQueue(queue_path).add_job("1.2.826.0.1.10", "/nowhere")
    holder = (  # a real process leases the job as a worker does, then dies by SIGKILL
        "import os, signal, sys\nfrom pathlib import Path\nfrom medseg.pacs.queue import JobQueue\n"
        "from medseg.pacs.service import owner_name\n"
        "assert JobQueue(Path(sys.argv[1])).lease(owner_name('w0'), 600) is not None\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    dead = subprocess.run([sys.executable, "-c", holder, str(queue_path)], capture_output=True, text=True, timeout=60)
    assert dead.returncode == -9, dead.stderr
    report = _status(config)
    (row,) = report["jobs"]
    assert (row["state"], row["orphaned"], report["counts"]["orphaned"]) == ("running", True, 1)
    assert "orphaned: its holder (pid" in row["reason"] and "pacs retry" in row["reason"]
    text = _medseg("pacs", "status", "--config", str(config))
    assert "job 1 running, orphaned" in text.stdout
    retried = _medseg("pacs", "retry", "1", "--config", str(config))
    assert retried.returncode == 0 and "queued again: 1" in retried.stdout, retried.stderr
    job = JobQueue(queue_path).job(1)
    assert (job.state, job.attempts, job.lease_owner) == ("queued", 0, None)
    assert _medseg("pacs", "retry", "1", "--config", str(config)).returncode == 2  # queued now: nothing to retry


# 11. a storage folder without a queue is refused, never created -------------------------------------------------------
@pytest.mark.parametrize("command", [["status"], ["retry", "1"], ["stop"], ["purge"]])
def test_commands_on_a_storage_without_queue_refuse_and_create_nothing(tmp_path: Path, command: list[str]) -> None:
    """`pacs status` on a storage path that did not exist created it and reported a healthy empty service."""
    config = tmp_path / "pacs.yaml"
    write_config(config, tmp_path / "not-mounted" / "store", {"folder": str(tmp_path / "segs")},
                 retention={"keep_days": 30})  # fmt: skip
    done = _medseg("pacs", *command, "--config", str(config))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1
    assert "no job queue (queue.db) in this storage folder" in done.stderr and "not-mounted" in done.stderr
    assert not (tmp_path / "not-mounted").exists()


# 8. `pixels: off` unquoted, as the example writes it ---------------------------------------------------------------
@pytest.mark.parametrize(("written", "read"), [("off", "off"), ('"off"', "off"), ("on", "scan"), ("scan", "scan")])
def test_research_pixels_off_unquoted_is_accepted(tmp_path: Path, written: str, read: str) -> None:
    """YAML reads a bare off as false: `pixels: off`, as configs/pacs.example.yaml shows it, was refused."""
    from medseg.pacs.config import load_config

    (tmp_path / "deid.key").write_bytes(b"k" * 40)
    (tmp_path / "deid.key").chmod(0o600)
    config = tmp_path / "pacs.yaml"
    config.write_text(f"storage: store\ndestination: {{folder: segs}}\nresearch:\n  folder: research\n"
                      f"  key_file: deid.key\n  pixels: {written}\n")  # fmt: skip
    assert load_config(config).research.pixels == read
    status = _medseg("pacs", "status", "--config", str(config))  # the CLI reads it the same way (no queue: exit 2)
    assert "research.pixels" not in status.stderr and "no job queue" in status.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("hello\n", "the config is a YAML single value, not a mapping of settings"),
    ("- 1\n", "the config is a YAML list, not a mapping of settings"),
    ("a: [1\n", "not valid YAML (line 2, column 1): did not find expected ',' or ']'"),
])  # fmt: skip
@pytest.mark.parametrize("command", ["serve", "status"])
def test_a_config_that_is_no_mapping_is_one_line_exit_2(tmp_path: Path, text: str, message: str, command: str) -> None:
    """A documentation review got "internal error: TypeError" (exit 4), or a three-line YAML message."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    done = subprocess.run([sys.executable, "-m", "medseg", "pacs", command, "--config", str(config)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"error: {config}: {message}. Start from configs/pacs.example.yaml."]
