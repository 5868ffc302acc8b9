"""Training configuration (YAML, validated with pydantic; unknown keys are rejected)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medseg.errors import InvalidInputError
from medseg.models.card import LABEL_NAME, IntensitySpec, NetworkSpec
from medseg.yamltext import load_yaml

M = TypeVar("M", bound=BaseModel)
Size = Annotated[int, Field(ge=1)]
Positive = Annotated[float, Field(gt=0)]
# Settings a resumed run may change (how long and how fast it runs); any other change is another training.
RUN_LENGTH_KEYS = ("max_iterations", "time_budget_min", "checkpoint_every_min", "threads")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(Strict):
    """Where samples come from and how patches are drawn."""

    manifest: str
    patch_size: tuple[Size, Size, Size] = (96, 96, 96)
    batch_size: int = Field(2, ge=1)
    pos_fraction: float = Field(0.67, ge=0, le=1)
    real_fraction: float = Field(0.15, ge=0, le=1)
    real_pos_fraction: float | None = Field(None, ge=0, le=1)
    num_workers: int = Field(1, ge=0)
    synth_val_seed: int = 777

    @property
    def real_positive_fraction(self) -> float:
        """Share of real-CT patches centred on the liver; the rest are centred anywhere in the body."""
        return self.pos_fraction if self.real_pos_fraction is None else self.real_pos_fraction


class SpatialAug(Strict):
    rotate_deg: tuple[float, float, float] = (8.0, 8.0, 15.0)
    scale: tuple[float, float] = (0.85, 1.2)
    anisotropy: float = 0.08
    elastic_vox: tuple[float, float] = (0.0, 3.0)


class AppearanceAug(Strict):
    p_random_intensity: float = Field(0.2, ge=0, le=1)
    noise_sd: tuple[float, float] = (3.0, 20.0)
    blur_sigma: tuple[float, float] = (0.2, 1.0)
    p_thick_slices: float = Field(0.35, ge=0, le=1)
    thick_factor: tuple[float, float] = (1.3, 2.7)
    bias_hu: tuple[float, float] = (0.0, 25.0)


class RobustAug(Strict):
    """Archive-storage augmentations (medseg/train/robust.py); all off by default."""

    p_clip: float = Field(0.0, ge=0, le=1)
    clips: tuple[tuple[float, float], ...] = ((-1024.0, 1024.0),)
    p_fov_cut: float = Field(0.0, ge=0, le=1)
    fov_keep: tuple[float, float] = (0.35, 0.9)
    p_sharpen: float = Field(0.0, ge=0, le=1)
    sharpen_amount: tuple[float, float] = (0.3, 1.5)


class AnatomyAug(Strict):
    """Optional synthesised structures (medseg/train/synth/anatomy.py `AnatomyParams`); off by default."""

    p_diaphragm: float = Field(0.0, ge=0, le=1)


class AugmentSpec(Strict):
    anatomy: AnatomyAug = AnatomyAug()
    spatial: SpatialAug = SpatialAug()
    appearance: AppearanceAug = AppearanceAug()
    robust: RobustAug = RobustAug()
    real_noise_sd: tuple[float, float] = (0.0, 15.0)
    real_hu_scale: tuple[float, float] = (0.92, 1.08)
    real_hu_shift: tuple[float, float] = (-25.0, 25.0)
    p_real_liver_shift: float = Field(0.0, ge=0, le=1)
    real_liver_shift_hu: tuple[float, float] = (-40.0, 40.0)


class OptimSpec(Strict):
    """AdamW with linear warm-up then cosine or poly decay over the run's progress (iterations or time budget)."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    warmup_iterations: int = Field(100, ge=0)
    schedule: Literal["cosine", "poly"] = "cosine"
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    grad_clip: float = Field(12.0, gt=0)


class LossSpec(Strict):
    """Weights of the marginal soft-Dice and cross-entropy terms (`medseg.train.losses.marginal_dice_ce`)."""

    dice_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, gt=0)


class RunSpec(Strict):
    """How long to train and how often to check; the run stops at whichever limit comes first."""

    max_iterations: int = Field(1000, ge=1)
    time_budget_min: float | None = Field(None, gt=0)
    val_every: int = Field(200, ge=1)
    checkpoint_every_min: float = Field(5.0, gt=0)
    seed: int = 20261123
    deterministic: bool = True
    threads: int | None = Field(None, ge=1)


class ValidationSpec(Strict):
    roi_size: tuple[Size, Size, Size] = (96, 96, 96)
    overlap: float = Field(0.25, ge=0, lt=1)
    sw_batch_size: int = Field(2, ge=1)
    synthetic_cases: int = Field(3, ge=0)
    weight_real: float = Field(0.5, ge=0, le=1)


class TrainConfig(Strict):
    """Everything `medseg train` needs besides the data root, the output folder and the device."""

    name: str
    version: str
    organ: str = "liver"
    labels: dict[int, str] = {0: "background", 1: "liver"}
    spacing: tuple[Positive, Positive, Positive] = (3.0, 3.0, 3.0)
    intensity: IntensitySpec = IntensitySpec()
    network: NetworkSpec = NetworkSpec()
    data: DataSpec
    augment: AugmentSpec = AugmentSpec()
    optim: OptimSpec = OptimSpec()
    loss: LossSpec = LossSpec()
    run: RunSpec = RunSpec()
    validation: ValidationSpec = ValidationSpec()
    init_weights: str | None = None

    @property
    def organs(self) -> tuple[str, ...]:
        """The foreground classes in label order (label i is organs[i - 1])."""
        return tuple(self.labels[i] for i in range(1, len(self.labels)))

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.network.out_channels != len(self.labels):
            raise ValueError("network.out_channels must equal the number of labels")
        if sorted(self.labels) != list(range(len(self.labels))) or self.labels[0] != "background":
            raise ValueError("labels must be 0..N-1 with 0 = background")
        if "liver" not in self.labels.values():
            raise ValueError("labels must include liver (real CT pairs carry a liver label)")
        bad = [name for name in self.labels.values() if not LABEL_NAME.match(name)]
        if bad or len(set(self.labels.values())) != len(self.labels):
            raise ValueError(f"label names must be unique, lower-case letters, digits and '_' ({bad[0]!r} is not): "
                             "the exported model card refuses any other" if bad else "label names must be unique")
        if self.intensity.a_max <= self.intensity.a_min:
            raise ValueError("intensity.a_max must exceed a_min")
        if self.organ not in self.organs:
            raise ValueError(f"organ {self.organ!r} is not one of the labels {list(self.organs)}")
        net = self.network
        if len(net.strides) != len(net.channels) - 1 or min(net.strides, default=1) < 1 or min(net.channels) < 1:
            raise ValueError("network.strides must have one entry (>= 1) fewer than network.channels (each >= 1)")
        if not 0 <= net.dropout < 1 or net.num_res_units < 0 or net.in_channels != 1:
            raise ValueError("network: dropout must be in [0, 1), num_res_units >= 0, in_channels 1")
        return self

    def training_sha256(self) -> str:
        """Digest of everything that decides what is trained: the run-length settings a resume may extend and the
        manifest's path (the manifest is compared by its own digest) left out."""
        d = self.model_dump(mode="json")
        for key in RUN_LENGTH_KEYS:
            d["run"].pop(key, None)
        d["data"].pop("num_workers", None)
        d["data"].pop("manifest", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _error_text(error: Any) -> str:
    """One pydantic error as 'key.path: message' (the message alone for a check across keys)."""
    msg = str(error["msg"]).removeprefix("Value error, ")
    loc = ".".join(str(p) for p in error["loc"])
    return f"{loc}: {msg}" if loc else msg


def read_validated(path: Path, model: type[M], what: str, parse: Callable[[bytes], Any] = load_yaml,
                  hint: str | None = None) -> tuple[M, str]:  # fmt: skip
    """Parse and validate a YAML/JSON file into `model`; returns it and the SHA-256 of the bytes it was read from."""
    try:
        raw = path.read_bytes()
        return model.model_validate(parse(raw)), hashlib.sha256(raw).hexdigest()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {what}: {exc.strerror}", path=path) from exc
    except ValidationError as exc:
        detail = "; ".join(_error_text(e) for e in exc.errors()[:3])
        raise InvalidInputError(f"invalid {what}: {detail}", path=path, hint=hint) from exc
    except (ValueError, yaml.YAMLError, TypeError) as exc:
        detail = "; ".join(str(exc).splitlines()[:3])
        raise InvalidInputError(f"invalid {what}: {detail}", path=path, hint=hint) from exc


def load_config(path: Path) -> tuple[TrainConfig, str]:
    """Read and validate a training config; returns it and the SHA-256 of the file."""
    return read_validated(path, TrainConfig, "training config", hint="See configs/liver.yaml.")
