"""Receive-path benchmark: `store_instance` (durable write + queue commit, what the C-STORE SCP does per instance)
without the network, in 1 and 2 threads, on the 78 real chaos CT slices. The full path over DICOM associations is
measured by `pytest -q -s tests/test_pacs_load.py`.

    .venv/bin/python bench/bench_pacs_receive.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import pydicom

from medseg.digests import default_data_root
from medseg.pacs.queue import JobQueue
from medseg.pacs.scp import store_instance


def rate(items: list[tuple[bytes, str]], threads: int) -> float:
    """Files per second storing `items` from `threads` threads into a fresh storage folder and queue."""
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        root = Path(tmp)
        queue = JobQueue(root / "queue.db")

        def run(part: list[tuple[bytes, str]]) -> None:
            for data, sop in part:
                store_instance(data, sop, "BENCH", root, queue, 60.0)

        workers = [threading.Thread(target=run, args=(items[i::threads],)) for i in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return len(items) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=default_data_root())
    args = parser.parse_args()
    files = sorted((args.shared / "ct" / "chaos_ct_sample" / "dicom").glob("*.dcm"))
    items = [(f.read_bytes(), str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)) for f in files]
    for threads in (1, 2):
        files_s = rate(items, threads)
        print(f"{threads} thread(s): {files_s:.1f} files/s ({len(items)} files, fsync file + folder + WAL)")


if __name__ == "__main__":
    main()
