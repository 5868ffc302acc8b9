"""DICOM TLS on both links of the service: the SCP takes studies only from peers with a trusted certificate, a stalled
handshake blocks no one, the SEG goes out only to a PACS whose certificate and name check out, bad TLS configuration
stops the service at start, and a real Orthanc with DICOM TLS on pushes a study and gets its SEG back."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from pacs_helpers import (
    NODELAY,
    Orthanc,
    Served,
    chaos_files,
    check_seg,
    free_port,
    make_study,
    wait_jobs,
    write_config,
)
from tls_pki import Pki, make_pki

from medseg.errors import UsageError
from medseg.pacs.config import PacsConfig, load_config
from medseg.pacs.queue import JobQueue
from medseg.pacs.scp import Receiver
from medseg.pacs.send import SendError, send_cstore


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(pair, ca: Path, **extra: object) -> dict:
    return {"certificate": str(pair.cert), "private_key": str(pair.key), "trusted_certificates": str(ca)} | extra


def _tls_receiver(pki: Pki, storage: Path) -> tuple[Receiver, JobQueue, int]:
    config = PacsConfig(listen={"port": free_port(), "tls": _tls(pki.service, pki.ca)}, storage=storage,
                        destination={"folder": str(storage / "out")}, completion={"quiet_seconds": 60})  # fmt: skip
    queue = JobQueue(config.queue_path)
    receiver = Receiver(config, queue)
    return receiver, queue, receiver.start()


def _storescu_tls(port: int, files: list[Path], pair, ca: Path | None) -> subprocess.CompletedProcess:
    """dcmtk storescu, with TLS (its own certificate `pair`, trusting `ca`) or plain TCP when `pair` is None."""
    tls = ["+tls", str(pair.key), str(pair.cert), "+cf", str(ca)] if pair is not None else []
    cmd = ["storescu", *tls, "-aet", "MODALITY", "-aec", "MEDSEG", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, env=NODELAY, capture_output=True, text=True, timeout=120)


def test_the_tls_listener_stores_from_trusted_peers_only_and_a_stalled_handshake_blocks_no_one(
    pki: Pki, shared: Path, tmp_path: Path
) -> None:
    files = chaos_files(shared)[30:34]
    receiver, queue, port = _tls_receiver(pki, tmp_path / "store")
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    stalled[1].sendall(bytes.fromhex("160301"))  # the first bytes of a ClientHello, then nothing
    try:
        t = time.monotonic()
        ok = _storescu_tls(port, files, pki.client, pki.ca)
        assert ok.returncode == 0, ok.stderr
        assert time.monotonic() - t < 20  # not held up by the two stalled connections
        assert len(queue.instances()) == 4
        rogue = _storescu_tls(port, chaos_files(shared)[40:42], pki.rogue, pki.ca)
        plain = _storescu_tls(port, chaos_files(shared)[40:42], None, None)
        assert rogue.returncode != 0 and plain.returncode != 0
        assert len(queue.instances()) == 4  # nothing from the untrusted certificate or the plain connection
        again = _storescu_tls(port, chaos_files(shared)[44:45], pki.client, pki.ca)
        assert again.returncode == 0, again.stderr
        assert len(queue.instances()) == 5 and receiver.outcomes == {"stored": 5}
    finally:
        for s in stalled:
            s.close()
        receiver.stop()


def test_the_seg_goes_only_to_a_destination_whose_certificate_and_name_check_out(
    pki: Pki, shared: Path, tmp_path: Path
) -> None:
    """The receiving end here is medseg's own TLS SCP (pynetdicom); Orthanc is the receiving end in the e2e test."""
    receiver, queue, port = _tls_receiver(pki, tmp_path / "store")
    src = chaos_files(shared)[35]
    dest = {"ae_title": "MEDSEG", "host": "127.0.0.1", "port": port, "timeout_s": 10}
    try:
        good = PacsConfig(storage=tmp_path, destination=dest | {"tls": _tls(pki.client, pki.ca)}).destination
        assert send_cstore(src, good, "SENDER") == "C-STORE status 0x0000"
        assert len(queue.instances()) == 1
        bad = {
            "untrusted server": _tls(pki.client, pki.rogue.cert),
            "wrong name": _tls(pki.client, pki.ca, server_name="pacs.example.org"),
            "untrusted client": _tls(pki.rogue, pki.ca),
        }
        for why, tls in bad.items():
            d = PacsConfig(storage=tmp_path, destination=dest | {"tls": tls}).destination
            with pytest.raises(SendError, match="over TLS"):
                send_cstore(chaos_files(shared)[36], d, "SENDER")
            assert len(queue.instances()) == 1, why
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p, t: t | {"certificate": str(p.parent / "missing.crt")}, "certificate: no such file"),
        (lambda p, t: t | {"private_key": str(p.parent / "modality.key")}, "do not load together"),
        (
            lambda p, t: (
                t | {"certificate": str(p.parent / "expired.crt"), "private_key": str(p.parent / "expired.key")}
            ),
            "expired on",
        ),
        (lambda p, t: t | {"trusted_certificates": t["private_key"]}, "not PEM certificates"),
        (lambda p, t: {"trusted_certificates": t["trusted_certificates"]}, "certificate and private_key are required"),
        (lambda p, t: t | {"private_key": None}, "together"),
    ],
)
def test_bad_tls_configuration_stops_the_service_at_start_with_exit_2(
    pki: Pki, tmp_path: Path, change, message
) -> None:
    tls = change(pki.service.cert, _tls(pki.service, pki.ca))
    path = tmp_path / "pacs.yaml"
    path.write_text(yaml.safe_dump({"listen": {"tls": tls}, "storage": str(tmp_path / "s"),
                                    "destination": {"folder": str(tmp_path / "o")}}))  # fmt: skip
    with pytest.raises(UsageError, match=message) as err:
        load_config(path)
    assert err.value.exit_code == 2


def test_tls_files_are_taken_from_the_config_folder_and_only_where_tls_can_apply(pki: Pki, tmp_path: Path) -> None:
    here = tmp_path / "site"
    shutil.copytree(pki.ca.parent, here / "certs")
    rel = {"certificate": "certs/medseg.crt", "private_key": "certs/medseg.key"}
    rel |= {"trusted_certificates": "certs/site-ca.crt"}
    path = here / "pacs.yaml"
    dest = {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242, "tls": rel}
    path.write_text(yaml.safe_dump({"listen": {"tls": rel}, "storage": "s", "destination": dest}))
    config = load_config(path)
    assert config.listen.tls is not None and config.listen.tls.certificate == here / "certs" / "medseg.crt"
    assert config.destination.tls is not None and config.destination.tls.trusted_certificates.is_file()
    for destination, message in [({"folder": "o", "tls": rel}, "not to a folder"),
                                 ({"dicomweb": "http://pacs/dicom-web", "tls": rel}, "https://")]:  # fmt: skip
        path.write_text(yaml.safe_dump({"storage": "s", "destination": destination}))
        with pytest.raises(UsageError, match=message):
            load_config(path)


@pytest.mark.slow
def test_orthanc_with_dicom_tls_pushes_a_study_and_gets_one_seg_back_over_tls(
    pki: Pki, shared: Path, tmp_path: Path
) -> None:
    """Both links encrypted and mutually authenticated: Orthanc (DCMTK's TLS) sends the study to medseg, medseg
    sends the SEG to Orthanc; a plain association to either side gets nothing in."""
    import requests

    study_dir = tmp_path / "study"
    study, series = make_study(chaos_files(shared), study_dir, range(24, 48), "tls")
    server = Orthanc(tmp_path / "orthanc", medseg_port=0)
    dest = {"ae_title": server.aet, "host": "127.0.0.1", "port": server.dicom, "tls": _tls(pki.service, pki.ca)}
    port = write_config(tmp_path / "pacs.yaml", tmp_path / "store", dest)
    cfg = yaml.safe_load((tmp_path / "pacs.yaml").read_text())
    cfg["listen"]["tls"] = _tls(pki.service, pki.ca)
    (tmp_path / "pacs.yaml").write_text(yaml.safe_dump(cfg))
    orthanc_cfg = json.loads(server.config.read_text()) | {
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(pki.pacs.cert), "DicomTlsPrivateKey": str(pki.pacs.key),
        "DicomTlsTrustedCertificates": str(pki.ca), "DicomTlsRemoteCertificateRequired": True,
        "DicomModalities": {"medseg": {"AET": "MEDSEG", "Host": "127.0.0.1", "Port": port, "UseDicomTls": True}},
    }  # fmt: skip
    server.config.write_text(json.dumps(orthanc_cfg))
    server.start()
    service = Served(tmp_path / "pacs.yaml", port, tmp_path / "serve.log").start()
    queue_path = tmp_path / "store" / "queue.db"
    try:
        orthanc_study = server.upload(study_dir, study)
        echo = requests.post(server.url + "/modalities/medseg/echo", json={}, timeout=30)
        assert echo.ok, echo.text
        push = requests.post(server.url + "/modalities/medseg/store",
                             json={"Resources": [orthanc_study], "Synchronous": True}, timeout=120)  # fmt: skip
        assert push.ok, push.text
        jobs = wait_jobs(queue_path, 1, settled=True)
        assert [j.state for j in jobs] == ["sent"], [(j.state, j.reason) for j in jobs]
        check_seg(server, study_dir, study, series)
        plain_in = _storescu_tls(port, chaos_files(shared)[60:61], None, None)
        plain_out = _storescu_tls(server.dicom, chaos_files(shared)[60:61], None, None)
        assert plain_in.returncode != 0 and plain_out.returncode != 0
        assert len(JobQueue(queue_path).instances()) == 24
    finally:
        service.stop()
        server.stop()
