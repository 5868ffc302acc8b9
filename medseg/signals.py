"""Ctrl-C held back across a store write that must not be cut in half; SIGTERM handled as Ctrl-C.

An MLflow write interrupted between its SQLite statements leaves the connection's transaction open and the store
locked, so the run can no longer be marked KILLED and the interrupt surfaced as "database is locked" (exit 4
instead of 130; seen in CI). The interrupt is delivered as soon as the write has committed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block with SIGINT recorded rather than raised; raise KeyboardInterrupt after it if one came.

    Only Python's own Ctrl-C handler in the main thread is replaced: elsewhere signals cannot be handled, and a
    handler someone installed (a service's graceful stop) is theirs to keep.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    pending: list[int] = []

    def record(signum: int, frame: Any) -> None:
        pending.append(signum)

    signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if pending:
            raise KeyboardInterrupt


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does (so the work hands back what it holds);
    once one came, a second Ctrl-C or SIGTERM is ignored while that happens. Main thread only. A signal the process
    was started with ignored (a background job's SIGINT, nohup-like launchers) stays ignored."""

    def stop(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")

    before = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    for signum, handler in before.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
