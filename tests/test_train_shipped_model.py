"""The shipped models are traceable to the config and manifests in the repository; the default is abdomen 2.2.0."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cli_run import run_cli

from medseg.models.registry import resolve_model
from medseg.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_the_default_liver_and_spleen_model_is_abdomen_2_2() -> None:
    for organ in ("liver", "spleen"):
        card = resolve_model(None, organ=organ).card
        assert (card.name, card.version) == ("abdomen", "2.2.0")
        assert organ in card.validated_organs


def test_models_list_names_the_default(capsys) -> None:
    code, out = run_cli(["models", "list"], capsys)
    assert code == 0
    assert "abdomen 2.2.0  organ=liver  modality=CT  (default for --organ liver, spleen)" in out
    assert "abdomen 2.1.0  organ=liver  modality=CT\n" in out
    assert "abdomen 2.0.0  organ=liver  modality=CT\n" in out
    assert "liver 1.0.0  organ=liver  modality=CT\n" in out


SHIPPED = [("abdomen-2.2", "configs/abdomen_stage5.yaml"), ("abdomen-2.1", "configs/abdomen_stage3.yaml"),
           ("abdomen", "configs/abdomen_stage2.yaml"), ("liver", "configs/liver.yaml")]  # fmt: skip


def test_stage_3_started_from_the_installed_2_0_0() -> None:
    """The stage-3 recipe initialises from `abdomen` (2.0.0), so that model stays installed, unchanged."""
    cfg, _ = load_config(REPO / "configs/abdomen_stage3.yaml")
    start = resolve_model("abdomen")
    assert cfg.init_weights == str(start.weights_path.relative_to(REPO))
    assert (start.card.version, start.verify()) == ("2.0.0", start.card.weights.sha256)


def test_stage_5_started_from_the_installed_2_1_0() -> None:
    """The default 2.2.0 is stage 5, initialised from `abdomen-2.1`, so that model stays installed, unchanged."""
    cfg, _ = load_config(REPO / "configs/abdomen_stage5.yaml")
    start = resolve_model("abdomen-2.1")
    assert cfg.init_weights == str(start.weights_path.relative_to(REPO))
    assert (start.card.version, start.verify()) == ("2.1.0", start.card.weights.sha256)


@pytest.mark.parametrize(("name", "config"), SHIPPED)
def test_shipped_model_matches_its_config_and_manifests(name: str, config: str) -> None:
    model = resolve_model(name)
    assert model.verify() == model.card.weights.sha256
    cfg, cfg_sha = load_config(REPO / config)
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
