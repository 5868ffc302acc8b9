"""Resumable checkpoints (model, optimiser, progress), written atomically so a kill never leaves a torn file.

Each checkpoint carries the SHA-256 of its own content (`content_sha256`, over every tensor's bytes and every
value), checked when it is read back; non-finite weights are never written and never read.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medseg.errors import InvalidInputError, ProcessingError


@dataclass
class Progress:
    """Where a run is: iterations done, training seconds used, the best validation score so far."""

    iteration: int = 0
    elapsed_s: float = 0.0
    best_score: float = -1.0
    best_iteration: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


def _feed(h: Any, value: Any) -> None:
    """Add `value` (nested dicts/lists of tensors and plain values) to the hash `h` in a fixed order."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(b"D")
        for k in sorted(value, key=str):
            h.update(repr(k).encode())
            _feed(h, value[k])
    elif isinstance(value, list | tuple):
        h.update(b"L")
        for v in value:
            _feed(h, v)
    else:
        h.update(repr(value).encode())


def content_digest(state: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (everything but the digest itself)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "content_sha256"})
    return h.hexdigest()


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or infinity, else None."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def torch_bytes(obj: Any) -> bytes:
    """torch.save of `obj` into memory: the zip's record names are torch's fixed `archive/...`, not derived from a
    file name, so equal content gives equal bytes (and equal SHA-256) whatever file it is written to."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _save(obj: Any, path: Path, what: str) -> None:
    """torch.save (through `torch_bytes`) to a temporary file, fsync, atomic rename; a failed write is one
    ProcessingError, no temp left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        data = torch_bytes(obj)
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProcessingError(f"cannot write {what} (disk full?): {detail}"[:300], path=path,
                              hint="Free space there and resume from checkpoints/last.pt.") from exc  # fmt: skip


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                    config_sha256: str, manifest_sha256: str, training_sha256: str = "") -> None:  # fmt: skip
    """Write model + optimiser + progress (+ their digest) to `path` atomically; non-finite weights are refused."""
    weights = model.state_dict()
    bad = first_non_finite(weights)
    if bad:
        raise ProcessingError(f"weights are not finite ({bad}); checkpoint not written", path=path)
    state = {
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "progress": asdict(progress),
        "config_sha256": config_sha256,
        "manifest_sha256": manifest_sha256,
        "training_sha256": training_sha256,
    }
    state["content_sha256"] = content_digest(state)
    _save(state, path, "checkpoint")


# What torch.load(weights_only=True) raises for a file that is not a torch file: its unpickler trips over text as a
# KeyError (an unknown opcode), over other bytes as UnpicklingError, over a foreign zip as RuntimeError.
NOT_A_TORCH_FILE = (OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                    UnicodeDecodeError, pickle.UnpicklingError)  # fmt: skip


def read_torch_file(path: Path, what: str, hint: str, data: bytes | None = None) -> Any:
    """torch.load(weights_only=True) of a file the user named (or of `data`, that file's bytes already read and
    digested, so what is parsed is what was digested); a file that is not a torch file (text, a truncated or
    foreign file) is one InvalidInputError naming it (exit 3), never an internal error. torch's warnings about such
    a file (an unexpected pickle protocol) are dropped when it is refused and re-issued when it loads."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            source = io.BytesIO(data) if data is not None else path
            state = torch.load(source, map_location="cpu", weights_only=True)
        except NOT_A_TORCH_FILE as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, KeyError | IndexError | pickle.UnpicklingError):
                detail = f"unpickling failed: {type(exc).__name__}"
            raise InvalidInputError(f"{what} is truncated or corrupt, or not a torch file at all ({detail})"[:300],
                                    path=path, hint=hint) from exc  # fmt: skip
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return state


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights only, no pickled code); check its digest and that
    its weights are finite."""
    if not path.is_file():
        raise InvalidInputError("checkpoint not found", path=path, hint="Pass checkpoints/last.pt of the run.")
    state = read_torch_file(path, "checkpoint", "Resume from a checkpoint of the run (checkpoints/last.pt).")
    parts = ("model", "optimizer", "progress")
    if not isinstance(state, dict) or not all(isinstance(state.get(k), dict) for k in parts):
        raise InvalidInputError("not a medseg training checkpoint", path=path,
                                hint="Resume from a checkpoint of the run (checkpoints/last.pt).")  # fmt: skip
    expected = state.get("content_sha256")
    if expected is not None and content_digest(state) != expected:
        raise InvalidInputError("checkpoint content does not match its SHA-256: corrupted", path=path,
                                hint="Resume from another checkpoint.")  # fmt: skip
    bad = first_non_finite(state["model"])
    if bad:
        raise InvalidInputError(f"checkpoint weights are not finite ({bad})", path=path,
                                hint="Resume from an earlier checkpoint.")  # fmt: skip
    return dict(state)


def save_weights(path: Path, model: torch.nn.Module | dict[str, torch.Tensor]) -> None:
    """The bare state_dict (the shipped model format), fsynced and renamed atomically; non-finite ones are refused."""
    weights = model if isinstance(model, dict) else model.state_dict()
    bad = first_non_finite(weights)
    if bad:
        raise ProcessingError(f"weights are not finite ({bad}); not written", path=path)
    _save(weights, path, "weights")
