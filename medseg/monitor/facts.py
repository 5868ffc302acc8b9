"""Per-case facts for monitoring, read from an infer summary.json: numbers, categories and QC flags, never identity.

Case names, paths, UIDs and dates are not kept: the case key is a keyed digest of the input's content digest, the
organ and the model weights, so re-collecting the same result matches it while nobody can read a name back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from medseg.errors import InvalidInputError
from medseg.yamltext import load_yaml

FEATURES_FILE = Path(__file__).with_name("features.yaml")
SUMMARY_SCHEMA_PREFIX = "medseg.infer.summary/"
MAX_CATEGORY = 64
_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")
_IDENTIFYING = re.compile(r"[/\\]|^\d+(\.\d+){4,}$|\d{8}")  # paths, DICOM UIDs (5+ parts), dates


@cache
def feature_paths() -> dict[str, dict[str, list[str]]]:
    """The summary paths of each numeric and categorical fact (features.yaml)."""
    return load_yaml(FEATURES_FILE.read_text())


@dataclass(frozen=True)
class CaseFacts:
    """What the monitor keeps about one case: pseudonymous key, digests, numbers, categories and QC flag codes."""

    case_key: str
    summary_sha256: str
    folder_ref: str
    model: str
    status: str
    numbers: dict[str, float] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()


def keyed_digest(text: str, key: bytes) -> str:
    """HMAC-SHA256 of `text`: equal inputs match, names and paths cannot be guessed back without the key."""
    return "hmac-sha256:" + hmac.new(key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def lookup(data: Any, dotted: str) -> Any:
    """The value at a dotted path such as `input.spacing_mm[2]`, or None when any step is missing."""
    for part in dotted.split("."):
        m = _INDEX.match(part)
        name, index = (m.group(1), int(m.group(2))) if m else (part, None)
        data = data.get(name) if isinstance(data, dict) else None
        if index is not None:
            data = data[index] if isinstance(data, list) and index < len(data) else None
        if data is None:
            return None
    return data


def _first(summary: dict[str, Any], paths: list[str]) -> Any:
    return next((v for v in (lookup(summary, p) for p in paths) if v not in (None, "")), None)


def _category(value: Any) -> str:
    """A category value as short text; anything shaped like a path, UID or date is not a category and is dropped."""
    text = str(value).strip()[:MAX_CATEGORY]
    return "(withheld)" if _IDENTIFYING.search(text) else text


def geometry_numbers(summary: dict[str, Any]) -> dict[str, float]:
    """Slice spacing, pixel spacing and field of view from the input's grid and direction (axial axis as infer's QC)."""
    spacing, shape = lookup(summary, "input.spacing_mm"), lookup(summary, "input.shape")
    if not (isinstance(spacing, list) and isinstance(shape, list) and len(spacing) == len(shape) == 3):
        return {}
    direction = lookup(summary, "input.direction")
    axial = 2
    if isinstance(direction, list) and len(direction) == 3:
        axial = max(range(3), key=lambda a: abs(float(direction[2][a])))
    inplane = [a for a in range(3) if a != axial]
    extent = [float(spacing[a]) * float(shape[a]) for a in range(3)]
    return {
        "slice_spacing_mm": float(spacing[axial]),
        "pixel_spacing_mm": sum(float(spacing[a]) for a in inplane) / 2,
        "fov_mm": min(extent[a] for a in inplane),
        "z_extent_mm": extent[axial],
    }


def organ_numbers(summary: dict[str, Any]) -> dict[str, float]:
    """Per organ: volume, mean HU, and the model's confidence when the summary carries one."""
    found: dict[str, float] = {}
    for organ in summary.get("organs") or []:
        name = _category(organ.get("name", "organ"))
        for key, feature in (("volume_ml", "volume_ml"), ("mean_hu", "mean_hu"), ("confidence", "confidence")):
            value = organ.get(key)
            if isinstance(value, dict):
                value = value.get("value", value.get("score"))
            if isinstance(value, int | float) and not isinstance(value, bool):
                found[f"{feature}:{name}"] = float(value)
    return found


def flag_codes(summary: dict[str, Any]) -> frozenset[str]:
    """QC flag codes of the case (`low_confidence` included when the model raises it), plus failed/rejected status."""
    codes = {_category(f.get("code")) for f in lookup(summary, "qc.flags") or [] if isinstance(f, dict)}
    for organ in summary.get("organs") or []:
        if organ.get("low_confidence") is True:
            codes.add("low_confidence")
    return frozenset(c for c in codes if c and c != "None")


def facts_from_summary(summary: Any, raw: bytes, origin: str, key: bytes) -> CaseFacts:
    """The monitored facts of one summary (`raw` is its file content, digested; `origin` kept only as a keyed ref)."""
    if not isinstance(summary, dict):
        raise InvalidInputError("the summary is not a JSON object", hint="Pass summaries written by `medseg infer`.")
    schema = str(summary.get("schema", ""))
    if not schema.startswith(SUMMARY_SCHEMA_PREFIX):
        raise InvalidInputError(
            f"not a medseg infer summary (schema {schema!r})", hint="Pass folders written by `medseg infer`."
        )
    input_digest = lookup(summary, "input.sha256") or hashlib.sha256(raw).hexdigest()
    model_digest = lookup(summary, "model.sha256") or ""
    organ = str(summary.get("organ", ""))
    numbers = geometry_numbers(summary) | organ_numbers(summary)
    categories: dict[str, str] = {}
    for name, paths in feature_paths()["numeric"].items():
        value = _first(summary, paths)
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers[name] = float(value)
    for name, paths in feature_paths()["categorical"].items():
        value = _first(summary, paths)
        categories[name] = _category(value) if value is not None else "(not recorded)"
    model = f"{_category(lookup(summary, 'model.name'))} {_category(lookup(summary, 'model.version'))}"
    return CaseFacts(
        case_key=keyed_digest(f"{input_digest}\x00{organ}\x00{model_digest}", key),
        summary_sha256=hashlib.sha256(raw).hexdigest(),
        folder_ref=keyed_digest(origin, key),
        model=model,
        status=_category(summary.get("status", "unknown")),
        numbers=numbers,
        categories=categories,
        flags=flag_codes(summary),
    )


def case_origin(folder: Path) -> str:
    """The text whose keyed digest names a case's output folder (its absolute path), for links from the dashboard."""
    return str(Path(folder).resolve())


def read_summary(path: Path, key: bytes) -> CaseFacts:
    """Read and digest one summary.json file; a broken file raises InvalidInputError naming it."""
    try:
        raw = Path(path).read_bytes()
        summary = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the summary: {exc}", path=path, hint="Rerun `medseg infer`.") from exc
    try:
        return facts_from_summary(summary, raw, case_origin(Path(path).parent), key)
    except InvalidInputError as exc:
        exc.path = Path(path)
        raise
