"""The CLI starts fast and maps errors to documented exit codes without tracebacks."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

MEDSEG = [sys.executable, "-m", "medseg"]
HEAVY = ("torch", "monai", "mlflow", "highdicom", "SimpleITK", "openvino", "onnxruntime", "scipy", "pynetdicom")
HEAVY += ("matplotlib",)  # the monitor dashboard plots lazily
HEAVY += ("rapidocr", "cv2")


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDSEG, *args], capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]


def test_help_imports_no_heavy_library() -> None:
    code = f"import sys, medseg.cli.main\nprint(','.join(n for n in {HEAVY!r} if n in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported at CLI start-up: {out.stdout.strip()}"


def test_help_is_fast() -> None:
    """`medseg --help` costs well under a second of CPU. CPU time, not wall time: on a busy machine (CI runs two
    test workers and their children on two cores) the wall time of a 0.2 s-CPU start-up reached 4 s."""
    run("--help")  # warm the bytecode cache
    best = min(_cpu_seconds(run, "--help") for _ in range(3))
    assert best < 1.0, f"medseg --help used {best:.2f} s of CPU"


def _cpu_seconds(fn, *args: str) -> float:  # type: ignore[no-untyped-def]
    """User + system CPU time of the child that `fn` starts and waits for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = fn(*args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert res.returncode == 0, res.stderr
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


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
