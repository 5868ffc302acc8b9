"""Ctrl-C held back across a store write that must not be cut in half.

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
