"""The short form of `bench/bench_infer.py` that CI runs (#19): every part of the benchmark runs and its outputs are
right (exit codes, parity with MONAI, batch studies segmented); the times are printed, never asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_infer_short_form_runs_every_part_with_correct_outputs(shared: Path) -> None:
    args = ["--slices", "40", "--repeat", "1", "--batch", "2", "--batch-slices", "40", "--organ", "liver,spleen"]
    env = dict(os.environ, MEDSEG_DATA_ROOT=str(shared))
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_infer.py"), *args],
        capture_output=True, text=True, timeout=900, env=env, cwd=REPO,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exit codes: cold 0, warm 0" in out, out
    for precision in ("f32", "int8"):
        assert re.search(rf"batch {precision}: 2 studies .* \(2 segmented, exit 0,", out), out
    agreement = [float(x) for x in re.findall(r"argmax agreement (\d\.\d+)", out)]
    assert len(agreement) == 2 and agreement[0] >= 0.999 and agreement[1] >= 0.99, out  # f32 core, INT8 core
    stages = re.search(r"seconds per stage \(summary.json\): (.*)", out)
    assert stages is not None
    for stage in ("preprocess", "inference", "postprocess", "write_labels", "write_seg", "write_preview"):
        assert f"{stage} " in stages.group(1), stages.group(1)
    assert "not judged (set for --slices 300)" in out
