"""Run the `medseg` CLI in-process in a test, as a user would call it, and collect what it printed."""

from __future__ import annotations

import pytest

from medseg.cli.main import main


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the CLI in-process; returns (exit code, stdout and stderr together)."""
    code, out, err = run_in_process(argv, capsys)
    return code, out + err
