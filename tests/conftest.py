"""Shared fixtures: paths to the real data in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import settings
from req_plugin import (  # noqa: F401  (REQ markers and the source digest -> JUnit XML properties)
    pytest_collection_modifyitems,
    pytest_sessionstart,
)

from medseg.train.manifest import default_data_root

# No per-example deadline anywhere: on a busy 2-core CI machine a stalled example is timing, not a defect (tests
# that need a deadline set their own). Examples and health checks stay as Hypothesis sets them.
settings.register_profile("medseg", deadline=None)
settings.load_profile("medseg")

REPO = Path(__file__).resolve().parents[1]
SHARED = default_data_root()
os.environ["MEDSEG_DATA_ROOT"] = str(SHARED)  # the commands the tests start read the same data


@pytest.fixture(scope="session")
def shared() -> Path:
    """Root of the shared real data; the suite fails loudly (not skips) when it is missing."""
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED}; set MEDSEG_DATA_ROOT")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_audit_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test audits into its own temporary store, never into the real ~/.local/share/medseg/audit."""
    folder = tmp_path_factory.mktemp("audit")
    monkeypatch.setenv("MEDSEG_AUDIT_DIR", str(folder))
    monkeypatch.delenv("MEDSEG_AUDIT_ANCHOR_DIR", raising=False)
    monkeypatch.setenv("MEDSEG_OPERATOR", "test-operator")
    return folder


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest):
    """A small tmpfs, 3 MB unless the test is marked `@pytest.mark.disk_mb(N)` (the tests run as root here and in
    CI); fails loudly when it cannot be mounted."""
    marker = request.node.get_closest_marker("disk_mb")
    size = marker.args[0] if marker else 3
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full test: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
