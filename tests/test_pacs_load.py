"""Load on loopback: 20 small real-CT studies sent back to back from two associations at once, into a real Orthanc.

All complete, none lost or duplicated; prints the receive rate (files/s, each fsynced before success) and the
studies per minute end to end. Reproduce: pytest -q -s tests/test_pacs_load.py
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from pacs_helpers import NODELAY, Orthanc, Served, chaos_files, make_study, wait_jobs, write_config

from medseg.pacs.queue import JobQueue

pytestmark = pytest.mark.slow

N_STUDIES, SLICES = 20, 16
QUIET_S = 15.0  # longer than the sends: the receive rate is measured without inference competing for the 2 cores


def test_twenty_studies_from_two_associations(shared: Path, tmp_path: Path) -> None:
    src = chaos_files(shared)
    folders = []
    for n in range(N_STUDIES):
        start = 28 + n % 8
        folder = tmp_path / "in" / f"s{n:02d}"
        make_study(src, folder, range(start, start + SLICES), f"load-{n}")
        folders.append(folder)
    orthanc = Orthanc(tmp_path / "orthanc", medseg_port=11112).start()
    dest = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom}
    port = write_config(tmp_path / "pacs.yaml", tmp_path / "store", dest, quiet=QUIET_S)
    service = Served(tmp_path / "pacs.yaml", port, tmp_path / "serve.log").start()
    try:
        halves = [folders[0::2], folders[1::2]]
        t0 = time.monotonic()
        commands = [
            ["storescu", "-aet", f"SENDER{i}", "-aec", "MEDSEG", "127.0.0.1", str(port)]
            + [str(f) for folder in half for f in sorted(folder.glob("*.dcm"))]
            for i, half in enumerate(halves)
        ]
        pipe = {"env": NODELAY, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        senders = [subprocess.Popen(cmd, **pipe) for cmd in commands]
        for s in senders:
            out = s.communicate(timeout=600)[0]
            assert s.returncode == 0, out[-2000:]
        receive_s = time.monotonic() - t0
        jobs = wait_jobs(tmp_path / "store" / "queue.db", N_STUDIES, timeout=1200)
        total_s = time.monotonic() - t0
        series = orthanc.seg_series()
    finally:
        service.stop()
        orthanc.stop()
    q = JobQueue(tmp_path / "store" / "queue.db")
    files = N_STUDIES * SLICES
    assert len(q.instances()) == files
    assert sorted(j.state for j in jobs) == ["sent"] * N_STUDIES, [(j.state, j.reason) for j in jobs]
    assert len({j.study_uid for j in jobs}) == N_STUDIES and len(q.ledger()) == N_STUDIES
    assert len(series) == N_STUDIES
    work_s = max(j.updated_at for j in jobs) - min(j.created_at for j in jobs)
    figures = {
        "studies": N_STUDIES, "files": files, "receive_s": round(receive_s, 2),
        "receive_files_per_s": round(files / receive_s, 1), "first_send_to_last_seg_s": round(total_s, 1),
        "quiet_s": QUIET_S, "processing_s": round(work_s, 1), "studies_per_min": round(N_STUDIES / work_s * 60, 2),
    }  # fmt: skip
    print("PACS LOAD", json.dumps(figures))
    assert figures["receive_files_per_s"] > 10
