"""A file named as a checkpoint, init weights or export weights that is not one (text, random bytes, another zip,
a pickle of something else) is one line naming the file, exit 3: `medseg train --resume <text file>` said
'internal error: KeyError: 101' (exit 4), while docs/training.md promises exit 3 for a bad checkpoint."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import InvalidInputError
from medseg.train.checkpoint import load_checkpoint
from medseg.train.export import save_half_precision
from medseg.train.loop import init_from

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros(3))
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "hello")
    return buf.getvalue()


NOT_TORCH = {
    "text": lambda: b"hello\n",  # the reported case: torch's unpickler raised KeyError: 101
    "empty": lambda: b"",
    "random bytes": lambda: np.random.default_rng(0).bytes(5000),
    "json": lambda: b'{"model": {}}',
    "pickled object": lambda: pickle.dumps(object(), protocol=4),  # torch also warned about the protocol
    "npz": _npz,
    "other zip": _zip,
}


@pytest.fixture(params=sorted(NOT_TORCH))
def not_a_torch_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "file.pt"
    path.write_bytes(NOT_TORCH[request.param]())
    return path


def test_a_file_that_is_not_a_torch_file_is_refused_as_a_checkpoint(not_a_torch_file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw torch warning about the refused file either
        with pytest.raises(InvalidInputError, match="checkpoint is truncated or corrupt, or not a torch file") as exc:
            load_checkpoint(not_a_torch_file)
    assert exc.value.exit_code == 3 and exc.value.path == not_a_torch_file and "\n" not in exc.value.one_line()


def test_a_torch_file_of_other_content_is_not_a_training_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    for content in ([1, 2], {"model": [1], "optimizer": {}, "progress": {}}, {"model": {}, "optimizer": {}}):
        torch.save(content, path)
        with pytest.raises(InvalidInputError, match="not a medseg training checkpoint"):
            load_checkpoint(path)


def test_init_weights_and_export_weights_that_are_not_torch_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "w.pt"
    text.write_text("hello\n")
    with pytest.raises(InvalidInputError, match="init_weights is truncated or corrupt"):
        init_from(torch.nn.Linear(2, 2), text)
    with pytest.raises(InvalidInputError, match="weights is truncated or corrupt"):
        save_half_precision(text, tmp_path / "half.pt")
    torch.save({"model": {"w": torch.zeros(2)}, "progress": {}}, text)  # a training checkpoint, not a state_dict
    with pytest.raises(InvalidInputError, match="init_weights is not a state_dict"):
        init_from(torch.nn.Linear(2, 2), text)
    with pytest.raises(InvalidInputError, match="not a weights file"):
        save_half_precision(text, tmp_path / "half.pt")
    assert not (tmp_path / "half.pt").exists()


def test_train_resume_from_a_text_file_is_exit_3_one_line_naming_it(tmp_path: Path) -> None:
    text = tmp_path / "text.pt"
    text.write_text("hello\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MEDSEG_CACHE_DIR=str(tmp_path / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    done = subprocess.run([str(BIN / "medseg"), "train", str(REPO / "configs/liver_ci.yaml"), "--out",
                           str(tmp_path / "run"), "--resume", str(text)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 3, done.stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: {text}: checkpoint is truncated or corrupt"), done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr and "Warning" not in done.stderr
