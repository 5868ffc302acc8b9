"""The one place the service calls the inference pipeline: load the model once, segment one received study.

Everything the service needs from `medseg.infer` goes through this module, so a change there is adjusted here only.
A case the pipeline refuses or fails (invalid input, QC rejection, no SEG possible) is a quarantine with the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.errors import MedsegError


@dataclass
class Segmenter:
    """A model and its runtime, loaded once and reused for every study; `organs` are the served organs, one SEG
    segment each, checked against the model card as `medseg infer --organ` checks them."""

    organs: tuple[str, ...]
    model: Any
    runner: Any
    strict: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def weights_sha256(self) -> str:
        """The model weights digest (part of every result's idempotency key)."""
        return str(self.model.card.weights.sha256)

    @property
    def model_name(self) -> tuple[str, str]:
        """(name, version) of the model."""
        return str(self.model.card.name), str(self.model.card.version)


@dataclass(frozen=True)
class SegOutcome:
    """What segmenting one study gave: a SEG file, or the reason there is none; `transient` when that reason is a
    processing failure (an output not writable, an internal error) worth another attempt, not a bad study."""

    seg: Path | None
    reason: str | None = None
    outputs: tuple[Path, ...] = ()
    transient: bool = False


def served_model(organs: str | Sequence[str], model: str | None = None) -> tuple[tuple[str, ...], Any]:
    """The organs ("liver", "liver,spleen" or a list) and the model that serves them (by name, folder or the first
    organ's default); a usage error names organs it lacks or has no validation figures for. Reads only the card."""
    from medseg.infer.organs import parse_organs, select_organs
    from medseg.models.registry import resolve_model

    served = parse_organs(organs if isinstance(organs, str) else ",".join(organs))
    installed = resolve_model(model, served[0])
    select_organs(installed.card, served)
    return served, installed


def load_segmenter(organs: str | Sequence[str], model: str | None = None, backend: str = "auto",
                   strict: bool = False) -> Segmenter:  # fmt: skip
    """`served_model`, then the weights' digest verified and the runtime loaded, once for every study."""
    from medseg.infer.runtime import load_runner

    served, installed = served_model(organs, model)
    return Segmenter(served, installed, load_runner(installed, backend, "cpu"), strict)


def fallback_warning(segmenter: Segmenter) -> str | None:
    """The console line for a `--backend auto` that fell back to eager torch (the export cache refused or the export
    failed), said once when the model is loaded: summary.json records it per case, but batch and service runs
    showed nothing, so a cache needing a chmod went unnoticed. None when the backend ran as asked."""
    fallback = (getattr(segmenter.runner, "info", None) or {}).get("fallback")
    return f"warning: {fallback}" if fallback else None


def software_version() -> str:
    """The software version in every idempotency key."""
    return f"medseg {__version__}"


def segment_study(segmenter: Segmenter, folder: Path, out: Path) -> SegOutcome:
    """Run the inference pipeline on the study in `folder`, writing into `out` (replacing earlier outputs)."""
    from medseg.infer.cases import discover_cases
    from medseg.infer.pipeline import InferSettings, run_case_safe

    try:
        cases, _notes = discover_cases(folder, segmenter.model.card.modality)
    except MedsegError as exc:
        return SegOutcome(None, exc.one_line())
    settings = InferSettings(",".join(segmenter.organs), out, strict=segmenter.strict, overwrite=True, preview=False,
                             organs=segmenter.organs)  # fmt: skip
    with segmenter.lock:
        result = run_case_safe(cases[0], segmenter.model, segmenter.runner, settings)
    outputs = tuple(p for p in result.outputs if p.is_file())
    if result.status in ("failed", "qc_rejected"):
        reason = _rejection(result.flags, folder) if result.status == "qc_rejected" else None
        reason = reason or f"{result.status}: {result.message or result.status}"
        return SegOutcome(None, reason, outputs, transient=result.status == "failed" and result.exit_code == 4)
    seg = next((p for p in outputs if p.suffix == ".dcm"), None)
    if seg is None:
        why = _summary_field(result.summary, "seg_not_written") or "the pipeline wrote no DICOM SEG"
        return SegOutcome(None, f"no SEG: {why}", outputs)
    return SegOutcome(seg, None, outputs)


def _rejection(flags: Sequence[Any], folder: Path) -> str | None:
    """A refusal or strict rejection worded for the service and `medseg batch`, which have neither --force nor
    --strict: what to run instead to segment the study anyway."""
    if not flags:
        return None
    refused = [f for f in flags if f.refuses]
    if refused:
        what = "input refused, not what the model is for: " + "; ".join(f"{f.code} ({f.reason})" for f in refused)
        hint = (f"To segment it anyway, run `medseg infer {folder} --force` (recorded in its summary, SEG and "
                "audit)")  # fmt: skip
    else:
        what = "QC rejected under strict: " + "; ".join(f"{f.code} ({f.reason})" for f in flags)
        hint = "Set strict: false in the service's configuration to segment it anyway"
    return f"qc_rejected: {folder}: {what}. {hint}"


def _summary_field(summary: Any, name: str) -> Any:
    """A field of the case summary, whether it is a dict or a pydantic model."""
    if summary is None:
        return None
    return summary.get(name) if isinstance(summary, dict) else getattr(summary, name, None)


def discover_studies(folder: Path, modality: str = "CT") -> tuple[list[tuple[str, Path]], list[str]]:
    """(name, folder) of every study or NIfTI file the pipeline would segment under `folder` (for `medseg batch`),
    and the notes on what it will not read (a skipped series, files), for the operator."""
    from medseg.infer.cases import discover_cases

    cases, notes = discover_cases(folder, modality)
    return [(case.name, case.source) for case in cases], notes
