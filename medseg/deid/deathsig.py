"""Processes that end with the run that started them: importing this module arms Linux's parent-death signal.

`medseg deid --workers N` with the pixel scan starts its workers through multiprocessing's fork server, which itself
outlives a SIGKILLed run (it and the resource tracker keep each other's pipes open), and so do workers forked from it.
The fork server imports this module at its start (a preload) and every worker calls `die_with_parent`: each process
gets SIGKILL when the process that started it dies, and a killed run leaves nothing behind; the rerun resumes."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (no-op where prctl is missing); exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:
        os._exit(1)


die_with_parent()
