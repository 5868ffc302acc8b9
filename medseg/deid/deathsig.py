"""Processes that end with the run that started them: Linux's parent-death signal for deid's worker processes.

`medseg deid --workers N` with the pixel scan starts its workers through multiprocessing's fork server, which itself
outlives a SIGKILLed run (it and the resource tracker keep each other's pipes open), and so do workers forked from it.
The fork server imports `medseg.deid.deathsig_preload` at its start and every worker calls `die_with_parent`: each
process gets SIGKILL when the process that started it dies, and a killed run leaves nothing behind; the rerun
resumes. Importing this module does nothing: the run's own process, whose parent may well be PID 1 (a container's
entrypoint shell, tini, a systemd unit), must never take its parent for dead."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


PARENT_ENV = "MEDSEG_DEID_RUN_PID"
server_pid: int | None = None  # set in the fork server (preload); its forked workers inherit it as their parent


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent dies (no-op where prctl is missing); exit now if the parent is no longer
    `parent` (the pid it was started by: given, else the fork server's for its workers), i.e. the process was
    re-parented before it got here."""
    if parent is None:
        parent = server_pid if server_pid not in (None, os.getpid()) else os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)
