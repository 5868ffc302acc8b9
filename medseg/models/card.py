"""Model cards: what a model is, what it is for, how it was trained, and the digest of its weights.

A model is a folder holding `model_card.yaml` and the weights file it names. The card is validated with
pydantic (unknown keys rejected) so a malformed card fails at load time, not during inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medseg.errors import InvalidInputError
from medseg.yamltext import load_yaml


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSpec(Strict):
    """Architecture hyper-parameters; `medseg.models.network.build_network` turns this into a torch module."""

    name: Literal["UNet", "DynUNet"] = "UNet"
    in_channels: int = 1
    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 1
    norm: Literal["instance", "batch"] = "instance"
    dropout: float = 0.0


class IntensitySpec(Strict):
    """HU window: clip to [a_min, a_max] then scale linearly to [0, 1]."""

    a_min: float = -200.0
    a_max: float = 300.0


class WeightsSpec(Strict):
    file: str = "weights.pt"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    storage: Literal["float32", "float16"] = Field("float32", description="dtype on disk; the network runs in float32")


class Int8Spec(Strict):
    """A post-training INT8 OpenVINO export shipped beside the weights, with the evidence that allowed shipping it."""

    folder: str = "int8"
    files: dict[str, str] = Field(description="file name in `folder` -> SHA-256")
    openvino: str
    nncf: str
    calibration: dict[str, Any] = Field(description="cases and windows it was calibrated on (never evaluation cases)")
    parity: dict[str, float] = Field(description="against eager f32 torch on the export parity input")
    acceptance: list[dict[str, Any]] = Field(description="per real manual case: Dice f32/int8 and volume difference")


class ConfidenceCalibration(Strict):
    """This model's `low_confidence` limit: the uncertain fraction depends on the network, so a model calibrated on
    its own synthetic validation side carries its limit (else the rules file's applies)."""

    max_uncertain_fraction: float = Field(gt=0)
    chosen_on: str = Field(description="how and on what the limit was chosen (never the evaluation cases)")


class ModelCard(Strict):
    """The model card shipped next to the weights (see docs and `medseg models list`)."""

    name: str
    version: str
    organ: str
    labels: dict[int, str]
    modality: Literal["CT", "MR"] = "CT"
    intended_use: str
    limitations: list[str] = []
    spacing: tuple[float, float, float]
    intensity: IntensitySpec = IntensitySpec()
    roi_size: tuple[int, int, int] = (96, 96, 96)
    network: NetworkSpec = NetworkSpec()
    weights: WeightsSpec
    volume_range_ml: tuple[float, float] | None = None
    training: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    int8: Int8Spec | None = None
    confidence: ConfidenceCalibration | None = None

    @field_validator("labels")
    @classmethod
    def _background_is_zero(cls, v: dict[int, str]) -> dict[int, str]:
        if v.get(0) != "background":
            raise ValueError("labels must map 0 to 'background'")
        return v

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read and validate a `model_card.yaml`."""
        try:
            data = load_yaml(path.read_text())
            return cls.model_validate(data)
        except (OSError, yaml.YAMLError, ValueError) as exc:
            raise InvalidInputError(
                f"invalid model card: {exc}".splitlines()[0], path=path, hint="Fix or reinstall the model."
            ) from exc

    def dump(self) -> str:
        """YAML text of the card (stable key order)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {k: v for k, v in self.labels.items() if k != 0}

    @property
    def validated_organs(self) -> tuple[str, ...]:
        """Organs with validation figures in this card: the main organ when a metrics set reports its mean Dice,
        any other label when `metrics.organs.<name>.mean_dice` is given. Only these may be served."""
        main = any(isinstance(m, dict) and m.get("mean_dice") is not None for m in self.metrics.values())
        others = self.metrics.get("organs") or {}
        return tuple(
            name
            for name in self.foreground_labels.values()
            if (name == self.organ and main) or (others.get(name) or {}).get("mean_dice") is not None
        )
