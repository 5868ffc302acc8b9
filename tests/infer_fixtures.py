"""Helpers for the inference tests: small model folders made on the fly (same contract as the shipped model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from medseg.models.registry import sha256_file


def make_model_folder(
    folder: Path,
    seed: int = 0,
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
    roi: tuple[int, int, int] = (96, 96, 96),
    channels: tuple[int, ...] = (8, 16, 32, 64),
    strides: tuple[int, ...] = (2, 2, 2),
    foreground_bias: float = 0.0,
) -> Path:
    """Write model_card.yaml + weights.pt of a randomly initialised UNet; `foreground_bias` shifts the liver logit."""
    import torch

    from medseg.models.card import NetworkSpec
    from medseg.models.network import build_network

    spec = NetworkSpec(channels=channels, strides=strides, num_res_units=1)
    torch.manual_seed(seed)
    net = build_network(spec)
    if foreground_bias:
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
        with torch.no_grad():
            last.bias[1] += foreground_bias
            last.bias[0] -= foreground_bias
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "weights.pt")
    card = {
        "name": f"test-liver-{seed}",
        "version": "0.0.1",
        "organ": "liver",
        "labels": {0: "background", 1: "liver"},
        "modality": "CT",
        "intended_use": "tests only",
        "spacing": list(spacing),
        "roi_size": list(roi),
        "intensity": {"a_min": -200.0, "a_max": 300.0},
        "network": spec.model_dump(mode="json"),
        "weights": {"file": "weights.pt", "sha256": sha256_file(folder / "weights.pt")},
    }
    (folder / "model_card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder


def intensity_predictor(threshold: float = 0.6, sharpness: float = 40.0):
    """A stand-in model with a known answer: 'liver' where the windowed intensity exceeds `threshold`."""

    def predict(batch: np.ndarray) -> np.ndarray:
        fg = (batch[:, 0] - threshold) * sharpness
        return np.stack([-fg, fg], axis=1).astype(np.float32)

    return predict
