"""Helpers for the PACS service tests: a real Orthanc on loopback, small CT studies made from real slices,
dcmtk storescu, and the service started as a separate process (so it can be SIGKILLed)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import yaml

from medseg.pacs.queue import JobQueue

ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
# completion.quiet_seconds for services in tests that expect one job (one generation) per study: a study is complete
# once no instance came for this long, so one C-STORE landing late (a slow fsync on a busy CI disk: 1.5 s was enough
# at 1.0 s) split it into two generations. Tests that wait "longer than the quiet time" wait QUIET_S + slack.
QUIET_S = 6.0
# what `medseg pacs serve` logs once its C-STORE listener is bound (medseg/pacs/service.py), with the bound port
LISTENING = re.compile(r"listening as \S+ on \S+:(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chaos_files(shared: Path) -> list[Path]:
    folder = shared / "ct" / "chaos_ct_sample" / "dicom"
    files = sorted(folder.glob("*.dcm"))
    if len(files) < 60:
        pytest.fail(f"real CT study missing at {folder}")
    return files


def make_study(src: list[Path], dst: Path, ks: range, seed: str) -> tuple[str, str]:
    """A valid CT study from real slices `ks` with new, seed-derived Study/Series/SOP/FoR UIDs; (study, series)."""
    import pydicom
    from pydicom.uid import generate_uid

    study, series, frame = (generate_uid(entropy_srcs=[seed, role]) for role in ("study", "series", "for"))
    dst.mkdir(parents=True, exist_ok=True)
    for n, k in enumerate(ks):
        ds = pydicom.dcmread(src[k])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        ds.save_as(dst / f"{n:04d}.dcm")
    return study, series


def storescu(port: int, folder: Path, aet: str = "MEDSEG", calling: str = "STORESCU", check: bool = True):
    """Send every file of `folder` in one association with dcmtk storescu (TCP_NODELAY=1)."""
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    cmd = ["storescu", "-aet", calling, "-aec", aet, "127.0.0.1", str(port), *files]
    return subprocess.run(cmd, env=NODELAY, capture_output=True, text=True, timeout=300, check=check)


class Orthanc:
    """Orthanc 1.10 from Debian, in the foreground, loopback ports chosen now, DICOMweb plugin on."""

    def __init__(self, root: Path, medseg_port: int) -> None:
        if shutil.which("Orthanc") is None or not ORTHANC_PLUGIN.is_file():
            pytest.fail("Orthanc or its DICOMweb plugin is not installed: run scripts/setup.sh")
        self.root = root
        self.http, self.dicom = free_port(), free_port()
        self.aet = "ORTHANC"
        self.name = f"medseg-test-{os.getpid()}-{self.http}"  # /system answering with it is this Orthanc, no other
        self.config = root / "orthanc.json"
        (root / "db").mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": self.name, "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
            "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": self.aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
            "DicomModalities": {"medseg": ["MEDSEG", "127.0.0.1", medseg_port]}, "Plugins": [str(ORTHANC_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "OverwriteInstances": True, "StableAge": 2,
            "HttpThreadsCount": 8,
        }  # fmt: skip
        self.config.write_text(json.dumps(cfg))
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.http}"

    def start(self) -> Orthanc:
        """Start Orthanc; return once it answers as itself. Its ports were chosen free in __init__: another process
        that took one meanwhile makes Orthanc exit (fails here at once, with its log), and another server on the HTTP
        port (the other xdist worker's Orthanc) does not answer with this one's Name."""
        path = self.root / "orthanc.log"
        offset = path.stat().st_size if path.exists() else 0
        with path.open("ab") as log:
            self.proc = subprocess.Popen(["Orthanc", str(self.config)], env=NODELAY, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = path.read_bytes()[offset:].decode(errors="replace")[-2000:]
                self.proc = None
                pytest.fail(f"Orthanc exited: {said}")
            try:
                answer = requests.get(self.url + "/system", timeout=1)
                if answer.ok and answer.json().get("Name") == self.name:
                    return self
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"Orthanc did not answer; see {path}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def upload(self, folder: Path, study_uid: str) -> str:
        """Store every file of `folder` through the REST API (as a PACS holds a study); Orthanc's id of the study."""
        for f in sorted(folder.rglob("*.dcm")):
            assert requests.post(self.url + "/instances", data=f.read_bytes(), timeout=30).ok
        query = {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
        (found,) = requests.post(self.url + "/tools/find", json=query, timeout=10).json()
        return str(found)

    def clear(self) -> None:
        for pid in requests.get(self.url + "/studies", timeout=10).json():
            requests.delete(f"{self.url}/studies/{pid}", timeout=10)

    def seg_instances(self) -> list[str]:
        """Orthanc ids of every SEG instance it holds."""
        q = {"Level": "Instance", "Query": {"Modality": "SEG"}}
        return list(requests.post(self.url + "/tools/find", json=q, timeout=10).json())

    def seg_series(self) -> list[str]:
        q = {"Level": "Series", "Query": {"Modality": "SEG"}}
        return list(requests.post(self.url + "/tools/find", json=q, timeout=10).json())

    def instance_file(self, orthanc_id: str) -> bytes:
        return requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30).content


def check_seg(orthanc: Orthanc, source_dir: Path, study: str, series: str) -> pydicom.Dataset:
    """Exactly one SEG; it references the source series and each frame sits exactly on its source slice."""
    import highdicom as hd

    ids = orthanc.seg_instances()
    assert len(ids) == 1, ids
    assert len(orthanc.seg_series()) == 1
    seg = hd.seg.segread(io.BytesIO(orthanc.instance_file(ids[0])))
    assert seg.StudyInstanceUID == study
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert seg.SeriesInstanceUID.startswith("2.25.") and seg.SOPInstanceUID.startswith("2.25.")
    sources = {}
    for f in source_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sources[ds.SOPInstanceUID] = np.asarray(ds.ImagePositionPatient, dtype=float)
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} <= set(
        sources
    )
    assert seg.number_of_frames > 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        assert np.abs(pos - sources[ref]).max() < 1e-3
    assert seg.get_segment_description(1).segment_label == "liver"
    return seg


def write_config(path: Path, storage: Path, destination: dict, quiet: float = QUIET_S, port: int | None = None,
                 **extra: object) -> int:  # fmt: skip
    """A service config on loopback; returns the port. By default a port free now (a test that must know it before
    the service starts: an Orthanc configured to send to it, a restart on the same port); port=0 lets the service
    bind a port of its own, which `Served.start` reads from its log into `Served.port` (no window in which another
    socket can take it)."""
    port = free_port() if port is None else port
    cfg = {
        "listen": {"ae_title": "MEDSEG", "host": "127.0.0.1", "port": port},
        "storage": str(storage), "destination": destination, "organs": ["liver"],
        "completion": {"quiet_seconds": quiet, "check_interval_s": 0.3},
        "retry": {"base_s": 1.0, "cap_s": 4.0, "max_attempts": 4}, "lease_seconds": 20,
    }  # fmt: skip
    cfg |= extra
    path.write_text(yaml.safe_dump(cfg))
    return port


class Served:
    """`medseg pacs serve` as a child process."""

    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str] | None = None, grace: float = 5) -> None:
        self.config, self.port, self.log, self.grace = config, port, log, grace
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Served:
        """Start the service and return once it says it listens, on this port (or, given port 0, on the port it got,
        then in self.port). Something else accepting on the port is not the service: a service that exited (the port
        held by another socket: exit 2 'in use') fails here at once, with its output."""
        offset = self.log.stat().st_size if self.log.exists() else 0  # a restart appends to the same log
        out = self.log.open("ab")
        cmd = [sys.executable, "-m", "medseg", "pacs", "serve", "--config", str(self.config)]
        cmd += ["--grace", str(self.grace)]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=out)
        out.close()  # the child holds its own copy
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None
            said = self.log.read_bytes()[offset:].decode(errors="replace")
            if exited:
                pytest.fail(f"service exited {self.proc.returncode}: {said[-2000:]}")
            found = LISTENING.search(said)
            if found:
                port = int(found.group(1))
                if self.port not in (0, port):
                    self.kill()
                    pytest.fail(f"service listens on {port}, not on {self.port}: {said[-2000:]}")
                self.port = port
                return self
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"service did not listen: {self.log.read_bytes()[offset:].decode(errors='replace')[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait up to 120 s (2-5 s on a quiet machine). Two CI runs saw a service never stop: SIGTERM had
        landed on a worker thread while the main thread sat in a plain `Event.wait()` (fixed: `wait_in_main_thread`,
        tests/test_pacs_signals.py)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                log = self.log.read_text()[-2000:] if self.log.is_file() else ""
                pytest.fail(f"service did not stop within 120 s of SIGTERM: {log}")
        self.proc = None


def wait_jobs(queue_path: Path, n: int, timeout: float = 240, states: tuple[str, ...] = ("sent", "quarantined"),
              settled: bool = False):  # fmt: skip
    """Wait until `n` jobs are in a final state (and, when `settled`, none is queued, running or pending)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if queue_path.exists():
            q = JobQueue(queue_path)
            jobs = q.jobs()
            q.close()
            still_open = settled and any(j.state in ("queued", "running", "pending") for j in jobs)
            if sum(j.state in states for j in jobs) >= n and not still_open:
                return jobs
        time.sleep(0.5)
    q = JobQueue(queue_path)
    pytest.fail(f"jobs not done in {timeout} s: {[(j.id, j.state, j.reason) for j in q.jobs()]}")
