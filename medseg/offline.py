"""No usage data leaves the machine: the telemetry that third-party libraries send by default is turned off.

Found while profiling `medseg infer` (issue 19): `import openvino` imports its model converter, which sends a Google
Analytics event through the `openvino_telemetry` package on every import (a forked process per event, a client id
written to ~/intel/openvino_ga_cid); NNCF sends its own events through the same package; MLflow 3 sends usage events
to its vendor unless told not to. A medical device on a hospital network makes no outbound connection it does not
need, and this one needs none, so medseg turns all three off before any of them is imported (`medseg/__init__.py`).
"""

from __future__ import annotations

import os
import sys

BLOCKED_MODULES = ("openvino_telemetry",)
"""Imports made to fail: OpenVINO's converter and NNCF then fall back to their own no-op stubs (both catch the
ImportError, by design: their telemetry is optional)."""

ENVIRONMENT = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
"""MLflow's documented opt-out and the common `DO_NOT_TRACK` convention (MLflow honours both); child processes
(training workers, Dask workers) inherit them."""


def telemetry_off() -> None:
    """Block the telemetry imports and set the opt-out variables, for this process and its children; idempotent.

    A module already imported cannot be recalled: the package calls this on import, before any of them loads."""
    for name in BLOCKED_MODULES:
        if sys.modules.get(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]  # the documented way to make an import fail
    os.environ.update(ENVIRONMENT)
