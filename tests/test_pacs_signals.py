"""The service's main thread must act on SIGTERM even when the kernel hands the signal to another thread."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from medseg.pacs.service import wait_in_main_thread


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_sigterm_delivered_to_a_worker_thread_still_stops_the_main_wait() -> None:
    stop = threading.Event()
    watchdog = threading.Timer(20.0, stop.set)  # ends a hung wait so that the test fails instead of blocking CI
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def signal_myself() -> None:
        time.sleep(0.3)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # the signal lands on this thread, not main

    worker = threading.Thread(target=signal_myself, daemon=True)
    try:
        watchdog.start()
        worker.start()
        start = time.monotonic()
        wait_in_main_thread(stop)
        elapsed = time.monotonic() - start
    finally:
        watchdog.cancel()
        signal.signal(signal.SIGTERM, old)
    assert elapsed < 5.0, f"the main thread woke only after {elapsed:.1f} s (the watchdog), not on the signal"
