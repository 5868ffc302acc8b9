"""The CLI starts fast and maps errors to documented exit codes without tracebacks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

MEDSEG = [sys.executable, "-m", "medseg"]
HEAVY = ("torch", "monai", "mlflow", "highdicom", "SimpleITK", "openvino", "onnxruntime", "scipy", "pynetdicom")


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDSEG, *args], capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]


def test_help_imports_no_heavy_library() -> None:
    code = f"import sys, medseg.cli.main\nprint(','.join(n for n in {HEAVY!r} if n in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported at CLI start-up: {out.stdout.strip()}"


def test_help_is_fast() -> None:
    run("--help")  # warm the bytecode cache
    best = min(_timed(run, "--help") for _ in range(3))
    assert best < 1.5, f"medseg --help took {best:.2f} s"


def _timed(fn, *args: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    res = fn(*args)
    assert res.returncode == 0, res.stderr
    return time.perf_counter() - t0


def test_version() -> None:
    from medseg import __version__

    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"medseg {__version__}"


@pytest.mark.parametrize("args", [["no-such-command"], ["convert"], ["convert", "a", "b", "--no-such-option"]])
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    res = run(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1


def test_every_subcommand_has_help_with_examples() -> None:
    from typer.main import get_command

    from medseg.cli.main import app

    def leaves(cmd: object, path: list[str]) -> list[list[str]]:
        subs = getattr(cmd, "commands", None)
        if not subs:
            return [path]
        return [leaf for name, sub in sorted(subs.items()) for leaf in leaves(sub, [*path, name])]

    paths = leaves(get_command(app), [])
    assert ["convert"] in paths and ["audit", "verify"] in paths  # groups are walked down to their commands
    for path in paths:
        res = run(*path, "--help")
        assert res.returncode == 0, (path, res.stderr)
        examples = res.stdout.split("Examples:", 1)
        assert len(examples) == 2, f"`medseg {' '.join(path)} --help` has no Examples section"
        assert f"medseg {' '.join(path)}" in examples[1], f"no example of `medseg {' '.join(path)}` in its help"


def test_missing_input_is_invalid_input(tmp_path: Path) -> None:
    res = run("convert", str(tmp_path / "nope"), str(tmp_path / "out.nii.gz"))
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr and "nope" in res.stderr
