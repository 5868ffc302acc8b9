"""Ctrl-C held back across a store write that must not be cut in half; SIGTERM handled as Ctrl-C.

An MLflow write interrupted between its SQLite statements leaves the connection's transaction open and the store
locked, so the run can no longer be marked KILLED and the interrupt surfaced as "database is locked" (exit 4
instead of 130; seen in CI). The interrupt is delivered as soon as the write has committed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _deferrable(handler: Any) -> bool:
    """Python's own Ctrl-C handler, or the stop handler of `interrupt_on_sigterm` (what `medseg` runs under)."""
    return handler is signal.default_int_handler or getattr(handler, "medseg_stop", False)


@contextmanager
def deferred_interrupt(noted: list[int] | None = None) -> Iterator[None]:
    """Run the block with Ctrl-C (and SIGTERM, where `interrupt_on_sigterm` handles it) recorded rather than raised;
    after the block, the first one recorded is handed to the handler it was held back from (KeyboardInterrupt).

    Only Python's own Ctrl-C handler and medseg's stop handler are replaced, in the main thread only: elsewhere
    signals cannot be handled, and a handler someone installed (a service's graceful stop) is theirs to keep.
    `noted`: each signal held back is also appended to it as it arrives (the audit trail records an interrupt that
    came while its end event was written).
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
        if noted is not None:
            noted.append(signum)

    for signum in held:
        signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        if pending:  # Python's handler raises KeyboardInterrupt; medseg's raises it unless it ignores a repeat
            held[pending[0]](pending[0], None)


LOST_INTERRUPT_S = 30.0


def _in_import_machinery(frame: Any) -> bool:
    """Whether the signal arrived while importlib's own code runs (a module-lock weakref callback, for one): an
    exception raised there is printed as "Exception ignored" and lost, and can leave the import lock held, after
    which the process hangs (seen once in 45 SIGTERMs of `medseg batch`, review 20)."""
    return frame is not None and frame.f_code.co_filename.startswith("<frozen importlib")


def _resend_soon(signum: int) -> None:
    """Deliver `signum` to this process again in 50 ms, when the main thread has left the code it is in."""
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


@contextmanager
def interrupt_on_sigterm(ignore_after: bool = False) -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does (so the work hands back what it holds);
    once one came, a second Ctrl-C or SIGTERM is ignored while that happens, unless it comes LOST_INTERRUPT_S or more
    after the first: the process is then still running because the first was lost (raised inside a callback whose
    exceptions Python ignores), and it is raised again. A signal caught inside importlib is re-sent 50 ms later rather
    than raised there. Main thread only. A signal the process was started with ignored (a background job's SIGINT,
    nohup-like launchers) stays ignored. `ignore_after`: both are ignored after the block instead of restored (a
    process that has finished its work and only reports and exits: a signal then would kill it with its outcome
    already recorded as another)."""
    first: list[float] = []

    def stop(signum: int, frame: Any) -> None:
        if _in_import_machinery(frame):
            _resend_soon(signum)
            return
        if first and time.monotonic() - first[0] < LOST_INTERRUPT_S:
            return
        first[:] = [time.monotonic()]
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


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one that belongs to another user counts as alive): how a
    lease, a pid file or an MLflow run tells that its holder was killed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
