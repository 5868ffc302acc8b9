"""Read-only bind mounts for fault tests (the tests run as root, where permissions alone do not stop a write)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def bind_read_only(src: Path, target: Path) -> None:
    """Mount `src` read-only at `target`; fails the test loudly when the mount cannot be made."""
    for cmd in (["mount", "--bind", str(src), str(target)], ["mount", "-o", "remount,bind,ro", str(target)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot make a read-only mount: {done.stderr.strip()}")
