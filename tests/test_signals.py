"""Runs `signals_cases.py` (Ctrl-C held back across MLflow writes) in a fresh interpreter: those tests raise SIGINT
in their own process, which in a long-lived pytest-xdist worker once ended the worker (and xdist then hung)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("signals_cases.py")


def test_ctrl_c_cases_in_a_fresh_interpreter(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly",
           "--basetemp", str(tmp_path / "t"), str(CASES)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=CASES.parent.parent)
    why = done.stdout[-3000:] + done.stderr[-2000:]
    assert done.returncode == 0 and re.search(r"^7 passed", done.stdout, re.M), why
