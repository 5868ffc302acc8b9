"""SIGTERM (what systemd, `docker stop` and job schedulers send) stops a command as Ctrl-C does: exit 130, nothing
half-written, the audit trail's end record says interrupted (a reviewer found `medseg infer` killed by the signal,
exit 143, with its staging folder left and a start record without an end)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"the command never got under way (exit {proc.poll()})")


def _last_event(audit: Path) -> tuple[str, str]:
    with sqlite3.connect(f"file:{audit / 'audit.db'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT kind, outcome FROM events ORDER BY seq DESC LIMIT 1").fetchone()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_infer_stopped_by_a_signal_exits_130_and_leaves_nothing(shared, tmp_path, signum) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medseg", "infer", str(shared / "ct/chaos_ct_sample/dicom"), "--organ", "liver",
           "--out", str(out), "--no-preview"]  # fmt: skip
    env = os.environ | {"MEDSEG_CACHE_DIR": str(tmp_path / "cache")}
    # pytest-xdist workers ignore SIGINT and children inherit that: give the command a terminal's default handlers
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    _wait_for(lambda: out.is_dir() and any(p.name.startswith(".tmp-") for p in out.iterdir()), proc)  # case running
    proc.send_signal(signum)
    _stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted", err
    assert "Traceback" not in err
    assert list(out.iterdir()) == [], list(out.iterdir())
    assert _last_event(Path(os.environ["MEDSEG_AUDIT_DIR"])) == ("end", "interrupted")
    verify = subprocess.run([sys.executable, "-m", "medseg", "audit", "verify"], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_signal_the_command_was_started_with_ignored_stays_ignored() -> None:
    """A background job's SIGINT is ignored by its shell; the SIGTERM handler must not switch Ctrl-C back on."""
    code = ("import signal; from medseg.signals import interrupt_on_sigterm\n"
            "with interrupt_on_sigterm():\n"
            "    print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM).__name__)\n"
            "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    assert out.stdout.split() == ["True", "stop", "True"], out.stdout + out.stderr
