"""The shipped default liver model is traceable to the config and manifests in the repository."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medseg.models.registry import resolve_model
from medseg.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_default_liver_model_matches_its_config_and_manifests() -> None:
    model = resolve_model(None, organ="liver")
    assert model.verify() == model.card.weights.sha256
    cfg, cfg_sha = load_config(REPO / "configs/liver.yaml")
    card = model.card
    assert card.training["config_sha256"] == cfg_sha
    assert (card.network, card.spacing, card.intensity, card.labels) == (cfg.network, cfg.spacing, cfg.intensity,
                                                                         cfg.labels)  # fmt: skip
    manifest = REPO / card.training["manifest"]["file"]
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == card.training["manifest"]["sha256"]
    locked = card.metrics["locked_test_real_ct"]["test_set"]
    assert (
        hashlib.sha256((REPO / f"data_manifests/{locked['manifest']}.json").read_bytes()).hexdigest()
        == locked["sha256"]
    )
    assert 0.0 <= card.metrics["locked_test_real_ct"]["mean_dice"] <= 1.0
    assert model.weights_path.stat().st_size < 20 * 2**20
