"""`medseg models prepare`: the ONNX export's library warnings are one `warning:` line each, never raw Python
warnings (a file path and a source line), as the README promises and `medseg infer` already does."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from cli_run import run_in_process


def test_prepare_onnxruntime_turns_torch_warnings_into_warning_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cold cache: the export runs and torch's exporter warns (instance_norm in train mode); the review saw its raw
    two-line UserWarning on stderr."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        code, out, err = run_in_process(["models", "prepare", "liver", "--backend", "onnxruntime"], capsys)
    assert code == 0, err
    assert "liver 1.0.0: onnxruntime exported" in out
    lines = err.strip().splitlines()
    assert any(line.startswith("warning: while exporting liver 1.0.0: UserWarning: ONNX export") for line in lines), err
    assert all(line.startswith("warning: while exporting liver 1.0.0: ") for line in lines), err
    assert [str(w.message) for w in escaped] == [], "no warning escapes the command as a raw Python warning"
