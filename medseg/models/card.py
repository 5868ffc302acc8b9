"""Model cards: what a model is, what it is for, how it was trained, and the digest of its weights.

A model is a folder holding `model_card.yaml` and the weights file it names. The card is validated with
pydantic (unknown keys rejected) so a malformed card fails at load time, not during inference.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medseg.errors import ProcessingError
from medseg.yamltext import load_yaml

LABEL_NAME = re.compile(r"^[a-z0-9_]+$")
"""A label name becomes an output file name (`<organ>.nii.gz`) and a summary key: lower-case letters, digits and
underscores only, so it can never name a path outside `--out`."""

MAX_ROI_VOXELS = 512
"""Largest sliding-window size per axis: 512^3 float32 activations are already several GiB per channel."""


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
    """HU window: clip to [a_min, a_max] then scale linearly to [0, 1] (an empty or reversed window would divide by
    zero or invert the image)."""

    a_min: float = -200.0
    a_max: float = 300.0

    @model_validator(mode="after")
    def _window_not_empty(self) -> IntensitySpec:
        if not (math.isfinite(self.a_min) and math.isfinite(self.a_max)):
            raise ValueError(f"a_min and a_max must be finite HU values (got {self.a_min:g}, {self.a_max:g})")
        if not self.a_min < self.a_max:
            raise ValueError(f"a_min ({self.a_min:g}) must be below a_max ({self.a_max:g})")
        return self


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
        bad = [name for name in v.values() if not LABEL_NAME.match(name)]
        if bad:
            raise ValueError(f"label name {bad[0]!r} must be lower-case letters, digits and '_' only (it names "
                             "an output file)")
        if len(set(v.values())) != len(v):
            raise ValueError(f"label names must be unique (got {sorted(v.values())})")
        return v

    @field_validator("spacing")
    @classmethod
    def _spacing_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        """A zero or negative voxel size makes the resampling grid singular."""
        if not all(math.isfinite(s) and s > 0 for s in v):
            raise ValueError(f"every spacing must be > 0 mm and finite (got {list(v)})")
        return v

    @field_validator("roi_size")
    @classmethod
    def _roi_at_least_one(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        """At least one voxel, at most MAX_ROI_VOXELS per axis (a larger window exhausts memory mid-inference)."""
        if not all(1 <= r <= MAX_ROI_VOXELS for r in v):
            raise ValueError(f"every roi_size must be >= 1 and <= {MAX_ROI_VOXELS} voxels (got {list(v)})")
        return v

    @field_validator("volume_range_ml")
    @classmethod
    def _range_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"must be [low, high] with 0 <= low < high (got {list(v)})")
        return v

    @model_validator(mode="after")
    def _labels_fit_the_network(self) -> ModelCard:
        """The labels must be the network's outputs, 0..N-1 with N its out_channels (a label beyond them is an organ
        the model cannot produce), and the labels the weights were trained with where the card records them (a
        reordered card names each output after another organ); the main organ must be one of them."""
        if self.organ not in self.foreground_labels.values():
            names = sorted(self.foreground_labels.values())
            raise ValueError(f"organ: {self.organ!r} is not one of the labels {names}")
        expected = list(range(self.network.out_channels))
        if sorted(self.labels) != expected:
            raise ValueError(f"labels: keys must be 0..{expected[-1]}, one per network output (network.out_channels "
                             f"is {self.network.out_channels}), not {sorted(self.labels)}")
        trained = (self.training.get("config") or {}).get("labels") if isinstance(self.training, dict) else None
        if isinstance(trained, dict) and _int_keys(trained) != dict(self.labels):
            raise ValueError("labels: not the labels the weights were trained with (training.config.labels "
                             f"{_int_keys(trained)})")
        return self

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read and validate a `model_card.yaml`; a card that is unreadable or invalid is one ProcessingError naming
        the file and the first field at fault (exit 4, as a model whose weights do not match its card)."""
        try:
            data = load_yaml(path.read_text())
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ProcessingError(f"invalid model card: {first_error(exc)}", path=path,
                                  hint="Fix or reinstall the model; it will not be used.") from exc  # fmt: skip
        except (OSError, yaml.YAMLError, ValueError) as exc:
            raise ProcessingError(
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


def _int_keys(labels: dict[Any, Any]) -> dict[int | str, Any]:
    """A labels mapping with its keys as integers where they are (YAML and JSON give "0" as well as 0)."""
    return {int(k) if str(k).lstrip("-").isdigit() else k: v for k, v in labels.items()}


def first_error(exc: ValidationError) -> str:
    """`field.path: message` of a pydantic error's first fault, on one line (an unknown key is named as such)."""
    errors = exc.errors()
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown key (not a model card field)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"{where + ': ' if where else ''}{message}{more}".split())
