"""The registry of installed models: built-in models ship in `medseg/models/zoo/<name>/`.

Loading always verifies the SHA-256 of the weights against the model card and refuses a mismatch; a built-in
model's card is checked against `card_digests.json` (an edited built-in card is refused). A card in a user's own
model folder cannot be checked against anything: its SHA-256 is recorded (summary.json, audit). No network access,
ever.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.digests import file_sha256
from medseg.errors import ProcessingError, UsageError
from medseg.models.card import ModelCard

if TYPE_CHECKING:
    import torch

ZOO = Path(__file__).resolve().parent / "zoo"
CARD_NAME = "model_card.yaml"
CARD_DIGESTS = Path(__file__).resolve().parent / "card_digests.json"  # built-in model name -> its card's SHA-256
# Default model per organ: abdomen 2.2.0 (liver and its neighbours as separate classes; stage 5 of the recipe,
# better than 2.1.0, 2.0.0 and liver 1.0.0 on every real CT with a manual label, docs/training.md). The earlier
# models stay installed under their own names (2.1.0 as `abdomen-2.1`, the start of stage 5; 2.0.0 as `abdomen`,
# the start of stage 3; liver 1.0.0 as `liver`).
DEFAULT_MODELS = {"liver": "abdomen-2.2", "spleen": "abdomen-2.2"}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (`medseg.digests.file_sha256`; this name is kept for existing callers)."""
    return file_sha256(path)


@dataclass(frozen=True)
class InstalledModel:
    """A model folder whose card has been validated (weights not yet read)."""

    card: ModelCard
    folder: Path
    card_file: str = CARD_NAME

    @property
    def weights_path(self) -> Path:
        return self.folder / self.card.weights.file

    @cached_property
    def card_sha256(self) -> str:
        """SHA-256 of the card file as read: the HU window, confidence limit and ranges that shaped the result."""
        return file_sha256(self.folder / self.card_file)

    @property
    def int8_sha256(self) -> dict[str, str]:
        """The INT8 export's files and their SHA-256 (what ran with --precision int8; checked by the runtime before
        it loads them); empty for a model without one."""
        return dict(self.card.int8.files) if self.card.int8 is not None else {}

    def verify(self) -> str:
        """Check the weights' SHA-256 against the card; return it, or raise ProcessingError."""
        return hashlib.sha256(self.verified_bytes()).hexdigest()

    def verified_bytes(self) -> bytes:
        """The weights file's bytes, read once and checked against the card's SHA-256: what is loaded must be what
        was digested (a file swapped between a digest read and a second read for loading would run unverified)."""
        try:
            data = self.weights_path.read_bytes()
        except FileNotFoundError:
            missing = ProcessingError("model weights missing", path=self.weights_path, hint="Reinstall the model.")
            raise missing from None
        except OSError as exc:
            raise ProcessingError(f"model weights cannot be read: {exc.strerror or exc}", path=self.weights_path,
                                  hint="Check the model folder's permissions, or reinstall the model.") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.card.weights.sha256:
            raise ProcessingError(
                f"model weights SHA-256 {digest[:12]}... does not match the model card "
                f"({self.card.weights.sha256[:12]}...)",
                path=self.weights_path,
                hint="The file was altered or corrupted; reinstall the model. It will not be used.",
            )
        return data

    def verify_int8(self) -> None:
        """Check every file of the model's INT8 export against the card's SHA-256 (ProcessingError, exit 4)."""
        if self.card.int8 is None:
            return
        folder = self.folder / self.card.int8.folder
        for name, digest in self.card.int8.files.items():
            path = folder / name
            if not path.is_file() or sha256_file(path) != digest:
                raise ProcessingError(
                    "INT8 model file missing or altered (SHA-256 differs from the model card)",
                    path=path,
                    hint="Reinstall the model, or use --precision f32. It will not be used.",
                )

    def load_network(self, device: str = "cpu") -> torch.nn.Module:
        """Read the weights once and verify their digest, refuse non-finite weights, then build the network and load
        those same bytes (eval mode). A weights file that is not a state_dict for the card's network is one
        ProcessingError naming it (exit 4), never an internal error."""
        import torch

        from medseg.models.network import build_network

        data = self.verified_bytes()
        net = build_network(self.card.network)
        state = self._state_dict(data, device)
        bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            raise ProcessingError(f"model weights are not finite ({bad})", path=self.weights_path,
                                  hint="The model is unusable (a diverged training); it will not be used.")
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:240]
            raise ProcessingError(f"model weights do not fit the card's network: {detail}", path=self.weights_path,
                                  hint="The card's network section is not the one these weights were trained with; "
                                  "fix the card or reinstall the model.") from exc  # fmt: skip
        return net.to(device).eval()

    def _state_dict(self, data: bytes, device: str) -> dict[str, torch.Tensor]:
        """The state_dict in `data` (weights_only: no pickled code runs); anything else is a ProcessingError."""
        import torch

        try:
            state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError,
                AttributeError, UnicodeDecodeError) as exc:  # fmt: skip
            detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            if isinstance(exc, pickle.UnpicklingError):
                detail = "it holds objects other than tensors, refused unloaded"
            raise ProcessingError(f"model weights are not a plain torch state_dict ({type(exc).__name__}: {detail})",
                                  path=self.weights_path, hint="Reinstall the model; it will not be used.") from exc
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ProcessingError("model weights are not a state_dict of names and tensors", path=self.weights_path,
                                  hint="Reinstall the model; it will not be used.")
        return state


@cache
def builtin_card_digests() -> dict[str, str]:
    """The recorded SHA-256 of each built-in model's card (`card_digests.json`, tested to match the files)."""
    return dict(json.loads(CARD_DIGESTS.read_text()))


def check_builtin_card(model: InstalledModel) -> InstalledModel:
    """A built-in model (a folder of the zoo) whose card differs from its recorded digest is refused (exit 4): its
    HU window or confidence limit would change results under the installed model's name and version."""
    if model.folder.resolve().parent != ZOO:
        return _refuse_a_builtin_impostor(model)
    expected = builtin_card_digests().get(model.folder.name)
    if model.card_sha256 != expected:
        raise ProcessingError(
            f"built-in model card altered (SHA-256 {model.card_sha256[:12]}... is not the recorded one)",
            path=model.folder / model.card_file,
            hint="Reinstall medseg; to use an edited card, copy the model folder, give the copy's card its own name "
            "or version, and pass the folder to --model.",
        )
    return model


def _refuse_a_builtin_impostor(model: InstalledModel) -> InstalledModel:
    """A user model folder whose card claims a built-in model's name and version but differs from that built-in's
    recorded card is refused (ProcessingError, exit 4, like an altered built-in card): an edited copy was served,
    summary and audit trail alike, as the built-in model it is not. An unchanged copy is the built-in itself."""
    digests = builtin_card_digests()
    for builtin in list_models():
        same = (builtin.card.name, builtin.card.version) == (model.card.name, model.card.version)
        if same and model.card_sha256 != digests.get(builtin.folder.name):
            raise ProcessingError(
                f"model card claims built-in model {model.card.name} {model.card.version} but differs from it",
                path=model.folder / model.card_file,
                hint="Give your model its own name or version in its card (rename/re-version your model).",
            )
    return model


def list_models() -> list[InstalledModel]:
    """All built-in models with a valid card, sorted by name."""
    found = []
    for card_path in sorted(ZOO.glob(f"*/{CARD_NAME}")):
        found.append(InstalledModel(ModelCard.load(card_path), card_path.parent))
    return found


def resolve_model(name_or_path: str | Path | None, organ: str | None = None) -> InstalledModel:
    """A model by built-in name, by folder/card path, or the default for `organ`; UsageError (exit 2) for an option
    that names no model."""
    if name_or_path is None:
        if organ is None or organ not in DEFAULT_MODELS:
            serving = sorted(m.folder.name for m in list_models() if organ in m.card.validated_organs)
            where = f"--model {', '.join(serving)} validates it" if serving else "no installed model validates it"
            raise UsageError(f"no default model for organ {organ!r}: {where}",
                             hint=f"Organs served by default: {', '.join(sorted(DEFAULT_MODELS))}.")  # fmt: skip
        name_or_path = DEFAULT_MODELS[organ]
    p = Path(name_or_path)
    if p.is_file() and p.name.endswith((".yaml", ".yml")):
        return check_builtin_card(InstalledModel(ModelCard.load(p), p.parent, p.name))
    if (p / CARD_NAME).is_file():
        return check_builtin_card(InstalledModel(ModelCard.load(p / CARD_NAME), p))
    builtin = ZOO / str(name_or_path) / CARD_NAME
    if builtin.is_file():
        return check_builtin_card(InstalledModel(ModelCard.load(builtin), builtin.parent))
    names = [m.folder.name for m in list_models()]
    raise UsageError(
        f"model {str(name_or_path)!r} not found",
        hint=f"--model takes {', '.join(names) or 'no installed model'}, or a model folder.",
    )
