"""stdout and stderr as scripts and log collectors see them: a reader that goes away does not turn a finished command
into click's silent exit 1 (its audit record said success, or failure with the outputs kept), and `--quiet` also
holds back info and progress records under `--log-json` (docs review 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def medseg(args: list[str], audit: Path, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSEG_AUDIT_DIR": str(audit)}
    return subprocess.run([sys.executable, "-m", "medseg", *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=120)  # fmt: skip


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone: every write to it fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize("args", [["--version"], ["series", "DICOM", "--json"]], ids=["version", "series"])
def test_a_reader_that_went_away_leaves_the_exit_code_and_record_of_the_work(shared: Path, tmp_path: Path,
                                                                            args: list[str]) -> None:  # fmt: skip
    args = [a.replace("DICOM", str(shared / "dicom" / "pydicom_data")) for a in args]
    write = closed_pipe()
    try:
        run = medseg(args, tmp_path / "audit", stdout=write)
    finally:
        os.close(write)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "error" not in run.stderr.lower()
    if args[0] == "series":
        shown = medseg(["audit", "show", "--command", "series", "--json"], tmp_path / "audit")
        (record,) = json.loads(shown.stdout)
        assert (record["outcome"], record["exit_code"]) == ("success", 0)


def test_quiet_holds_back_info_records_under_log_json(shared: Path, tmp_path: Path) -> None:
    dicom = shared / "dicom" / "pydicom_data"
    loud = medseg(["--log-json", "series", str(dicom)], tmp_path / "a1")
    quiet = medseg(["--quiet", "--log-json", "series", str(dicom)], tmp_path / "a2")
    assert loud.returncode == quiet.returncode == 0
    levels = [json.loads(line)["level"] for line in quiet.stderr.splitlines() if line.strip()]
    assert "info" in {json.loads(line)["level"] for line in loud.stderr.splitlines() if line.strip()}
    assert "info" not in levels and "progress" not in levels
    assert quiet.stdout == loud.stdout
