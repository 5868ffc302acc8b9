"""Imported by deid's fork server only (a preload): arms its parent-death signal (`medseg.deid.deathsig`); the run
that starts the fork server names itself in MEDSEG_DEID_RUN_PID, so a run killed while the server starts is seen,
and the server names itself to the workers it forks."""

import os

from medseg.deid import deathsig

deathsig.die_with_parent(int(os.environ[deathsig.PARENT_ENV]) if os.environ.get(deathsig.PARENT_ENV, "").isdigit()
                         else None)  # fmt: skip
deathsig.server_pid = os.getpid()
