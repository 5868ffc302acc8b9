"""Resumable checkpoints (model, optimiser, progress), written atomically so a kill never leaves a torn file."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medseg.errors import InvalidInputError


@dataclass
class Progress:
    """Where a run is: iterations done, training seconds used, the best validation score so far."""

    iteration: int = 0
    elapsed_s: float = 0.0
    best_score: float = -1.0
    best_iteration: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                    config_sha256: str, manifest_sha256: str) -> None:  # fmt: skip
    """Write model + optimiser + progress to `path` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": asdict(progress),
        "config_sha256": config_sha256,
        "manifest_sha256": manifest_sha256,
    }
    torch.save(state, tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights only, no pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise InvalidInputError(f"cannot read checkpoint: {exc}".splitlines()[0], path=path) from exc
    if not isinstance(state, dict) or not {"model", "optimizer", "progress"} <= state.keys():
        raise InvalidInputError("not a medseg training checkpoint", path=path)
    return state


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """The bare state_dict (the shipped model format), written atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
