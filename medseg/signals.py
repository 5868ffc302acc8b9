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


def _deferrable(handler: Any) -> bool:
    """Python's own Ctrl-C handler, or the stop handler of `interrupt_on_sigterm` (what `medseg` runs under)."""
    return handler is signal.default_int_handler or getattr(handler, "medseg_stop", False)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block with Ctrl-C (and SIGTERM, where `interrupt_on_sigterm` handles it) recorded rather than raised;
    after the block, the first one recorded is handed to the handler it was held back from (KeyboardInterrupt).

    Only Python's own Ctrl-C handler and medseg's stop handler are replaced, in the main thread only: elsewhere
    signals cannot be handled, and a handler someone installed (a service's graceful stop) is theirs to keep.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {n: h for n in (signal.SIGINT, signal.SIGTERM) if _deferrable(h := signal.getsignal(n))}
    if not held:
        yield
        return
    pending: list[int] = []

    def record(signum: int, frame: Any) -> None:
        pending.append(signum)

    for signum in held:
        signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        if pending:
            held[pending[0]](pending[0], None)  # raises KeyboardInterrupt
            raise KeyboardInterrupt


@contextmanager
def interrupt_on_sigterm(ignore_after: bool = False) -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does (so the work hands back what it holds);
    once one came, a second Ctrl-C or SIGTERM is ignored while that happens. Main thread only. A signal the process
    was started with ignored (a background job's SIGINT, nohup-like launchers) stays ignored. `ignore_after`: both
    are ignored after the block instead of restored (a process that has finished its work and only reports and
    exits: a signal then would kill it with its outcome already recorded as another)."""

    def stop(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")

    stop.medseg_stop = True  # type: ignore[attr-defined]
    before = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    for signum, handler in before.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, signal.SIG_IGN if ignore_after else handler)
