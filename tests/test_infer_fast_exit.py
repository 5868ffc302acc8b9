"""The fast exit after a successful `medseg infer`: the process ends with os._exit only once every output and the
audit end record are on disk; a failure exits the normal way; in-process calls never exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pydicom
import pytest
from infer_fixtures import make_model_folder
from test_infer_cli import _audit_end_events

from medseg.cli import state
from medseg.cli.main import main


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model"), seed=1, roi=(64, 64, 64), foreground_bias=1000.0)


def _infer(src, out, model, cache, **env: str) -> subprocess.CompletedProcess[str]:
    medseg = os.path.join(os.path.dirname(sys.executable), "medseg")
    args = [medseg, "--log-json", "infer", str(src), "--model", str(model), "--out", str(out)]
    return subprocess.run(args, env=dict(os.environ, MEDSEG_CACHE_DIR=str(cache), **env), capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_fast_exit_leaves_complete_outputs_and_audit_record(shared, tmp_path, model):
    src = shared / "ct/chaos_ct_sample/dicom"
    fast = _infer(src, tmp_path / "fast", model, tmp_path / "cache")
    assert fast.returncode == 0, fast.stderr
    assert '"case_done"' in fast.stderr and "dicom: flagged" in fast.stdout  # printed output was flushed
    case = tmp_path / "fast" / "dicom"
    assert sorted(p.name for p in case.iterdir()) == ["liver.nii.gz", "preview.png", "seg.dcm", "summary.json"]
    assert json.loads((case / "summary.json").read_text())["status"] == "flagged"
    assert pydicom.dcmread(case / "seg.dcm").NumberOfFrames > 0
    slow = _infer(src, tmp_path / "slow", model, tmp_path / "cache", MEDSEG_NO_FAST_EXIT="1")
    assert slow.returncode == 0, slow.stderr
    ends = [e for e in _audit_end_events() if e["command"] == "infer"]
    assert len(ends) == 2 and all(e["outcome"] == "success" and e["exit_code"] == 0 for e in ends), ends


def test_failure_exits_with_its_code(shared, tmp_path, model):
    proc = _infer(shared / "ct/chaos_ct_sample/liver.nii.gz", tmp_path / "o", tmp_path / "nomodel", tmp_path / "c")
    assert proc.returncode == 2, proc.stderr  # --model names no model: a usage error
    last = json.loads(proc.stderr.strip().splitlines()[-1])
    assert last["level"] == "error" and last["exit_code"] == 2 and "not found. --model takes" in last["message"], last


def test_in_process_call_does_not_exit(shared, tmp_path, model, monkeypatch, capsys):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(shared / "ct/chaos_ct_sample/dicom"), "--model", str(model), "--out", str(tmp_path)])
    assert exc.value.code == 0, capsys.readouterr().err
    assert state.fast_exit and (tmp_path / "dicom") in state.fast_exit[0].folders
