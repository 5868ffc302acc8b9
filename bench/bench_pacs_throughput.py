"""Batch throughput through the PACS-adjacent service (issue 19): studies of 512x512x150 (generated from the real
CHAOS CT with fresh UIDs, as `bench_infer.py --batch` makes them) sent with `storescu` from two associations into
`medseg pacs serve`, segmented by its worker and the SEG stored into a real Orthanc. Prints studies per minute from
the first job created to the last SEG sent, next to `medseg infer FOLDER` over the same studies in the same run.

    .venv/bin/python bench/bench_pacs_throughput.py --studies 20 --slices 150
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--slices", type=int, default=150)
    ap.add_argument("--quiet", type=float, default=2.0, help="seconds without new files before a study is complete")
    a = ap.parse_args()

    from bench_infer import make_series
    from pacs_helpers import NODELAY, Orthanc, Served, wait_jobs, write_config

    from medseg.pacs.queue import JobQueue

    with tempfile.TemporaryDirectory(prefix="medseg-pacs-bench-") as tmp_name:
        tmp = Path(tmp_name)
        folders = [tmp / "in" / f"s{n:02d}" for n in range(a.studies)]
        for folder in folders:
            make_series(folder, a.slices)
        orthanc = Orthanc(tmp / "orthanc", medseg_port=11112).start()
        dest = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom}
        port = write_config(tmp / "pacs.yaml", tmp / "store", dest, quiet=a.quiet)
        service = Served(tmp / "pacs.yaml", port, tmp / "serve.log").start()
        try:
            t0 = time.monotonic()
            pipe = {"env": NODELAY, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
            commands = [
                ["storescu", "-aet", f"SENDER{i}", "-aec", "MEDSEG", "127.0.0.1", str(port)]
                + [str(f) for folder in half for f in sorted(folder.glob("*.dcm"))]
                for i, half in enumerate([folders[0::2], folders[1::2]])
            ]
            senders = [subprocess.Popen(cmd, **pipe) for cmd in commands]
            for s in senders:
                out = s.communicate(timeout=1800)[0]
                if s.returncode != 0:
                    raise SystemExit(f"storescu failed: {out[-2000:]}")
            receive_s = time.monotonic() - t0
            jobs = wait_jobs(tmp / "store" / "queue.db", a.studies, timeout=3600)
            seg_series = len(orthanc.seg_series())
        finally:
            service.stop()
            orthanc.stop()
        states = sorted(j.state for j in jobs)
        work_s = max(j.updated_at for j in jobs) - min(j.created_at for j in jobs)
        files = len(JobQueue(tmp / "store" / "queue.db").instances())
        figures = {
            "studies": a.studies, "slices": a.slices, "files": files, "receive_s": round(receive_s, 1),
            "processing_s": round(work_s, 1), "studies_per_min": round(a.studies / work_s * 60, 1),
            "all_sent": states == ["sent"] * a.studies, "seg_series_in_orthanc": seg_series,
        }  # fmt: skip
        print("PACS THROUGHPUT", json.dumps(figures))
        medseg = str(Path(sys.executable).parent / "medseg")
        t = time.monotonic()
        proc = subprocess.run([medseg, "--quiet", "infer", str(tmp / "in"), "--out", str(tmp / "out")],
                              capture_output=True, text=True)  # fmt: skip
        folder_s = time.monotonic() - t
        print(f"medseg infer FOLDER, same studies, same run: {a.studies / folder_s * 60:.1f} studies/min "
              f"({folder_s:.1f} s, exit {proc.returncode})")


if __name__ == "__main__":
    main()
