"""Per-case facts for monitoring, read from an infer summary.json: numbers, categories and QC flags, never identity.

Case names, paths, UIDs and dates are not kept: the case key is a keyed digest of the input's content digest, the
organ and the model weights, so re-collecting the same result matches it while nobody can read a name back.
A summary whose monitored values have the wrong type or are not finite is refused (InvalidInputError naming the
value), so one broken file is skipped by `monitor build` instead of corrupting or aborting it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
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
WITHHELD = "(withheld)"
NOT_RECORDED = "(not recorded)"
_HINT = "Rerun `medseg infer` for this case; the monitor reads summaries as infer writes them."
_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")
_MULTI_VALUE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 +._-]{0,63}$")
_MONTH = (
    r"(jan(uary)?|feb(ruary)?|mar(ch)?|apr(il)?|may|june?|july?|aug(ust)?|sep(t(ember)?)?|oct(ober)?|nov(ember)?"
    r"|dec(ember)?)"
)
_IDENTIFYING = re.compile(
    "|".join(
        (
            r"[/\\]",  # a path
            r"^\d+(\.\d+){4,}$",  # a DICOM UID (5+ parts)
            r"\d{6,}",  # a long digit run: DICOM dates (YYYYMMDD), record and accession numbers
            r"\b\d{4}[-.]\d{1,2}[-.]\d{1,2}\b",  # 2024-01-05, 2024.01.05
            r"\b\d{1,2}[-.]\d{1,2}[-.]\d{4}\b",  # 05.01.2024, 05-01-2024
            rf"\b{_MONTH}\.?\s+\d{{1,2}}\b",  # Jan 5, January 05
            rf"\b\d{{1,2}}\.?\s+{_MONTH}\b",  # 5 Jan, 5. Januar
            r"\b\d{1,2}:\d{2}\b",  # a time of day
            r"\^",  # a DICOM person name (DOE^JOHN)
            r"\b(mrn|dob|patient|birth|pid|accession)\b",  # labels of identifying values
            r"\b(mrn|pid|acc|accession|pt|patient|id)[\s#:._-]*\d{3,}",  # a label glued to its number: MRN12345
            r"[\w.+-]+@[\w-]+\.\w",  # an e-mail address
            r"\b[a-z]{2,},\s*[a-z]{2,}\b",  # 'Smith, John'
            rf"\b{_MONTH}\.?\s+\d{{4}}\b",  # Jan 2024
            r"\b\d{3,}[-/]\d{3,}\b",  # 4711-0815: a number in two parts
        )
    ),
    re.IGNORECASE,
)


@cache
def feature_paths() -> dict[str, dict[str, list[str]]]:
    """The summary paths of each numeric, categorical and per-organ fact (features.yaml)."""
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


def _malformed(where: str, value: Any) -> InvalidInputError:
    """The error for a monitored value of the wrong type or not finite (the value shown short)."""
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return InvalidInputError(f"malformed summary: {where} is {shown}", hint=_HINT)


def number(value: Any, where: str) -> float | None:
    """A finite number as float, None when absent; a string, bool, list, NaN, infinity or overflow is refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"{where} (not a number)", value)
    try:
        result = float(value)
    except OverflowError as exc:
        raise _malformed(f"{where} (too large)", value) from exc
    if not math.isfinite(result):
        raise _malformed(f"{where} (not finite)", value)
    return result


def is_identifying(text: str) -> bool:
    """Whether text looks like a path, UID, date or time, person name, record number or a labelled identifier."""
    return _IDENTIFYING.search(text) is not None


def _category(value: Any) -> str:
    """A category value as short text; anything shaped like an identifier (see is_identifying) is withheld."""
    text = str(value).strip()
    return WITHHELD if is_identifying(text) else text[:MAX_CATEGORY]


def category(value: Any, where: str) -> str:
    """A text or number as a category value; a list, object or non-finite number is refused."""
    if isinstance(value, dict | list) or (isinstance(value, float) and not math.isfinite(value)):
        raise _malformed(f"{where} (not a text)", value)
    return _category(value)


def dicom_multi_value(text: str) -> str:
    """A DICOM multi-value as infer writes it (`I30f\\3`) joined by `|`, so its separator is not taken for a Windows
    path and the value is kept; anything else (`C:\\Users`, `\\\\server`) is returned unchanged."""
    parts = text.split("\\")
    if len(parts) > 1 and all(_MULTI_VALUE_PART.match(part) for part in parts):
        return "|".join(parts)
    return text


def _first(data: Any, paths: list[str]) -> tuple[str, Any]:
    """The first path with a value (None and "" count as absent) and that value."""
    for path in paths:
        value = lookup(data, path)
        if value not in (None, ""):
            return path, value
    return paths[0] if paths else "", None


def _list_of(value: Any, kind: type, where: str) -> list[Any]:
    """`value` as a list whose items are all `kind` (None is an empty list); anything else is refused."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise _malformed(f"{where} (not a list of {'objects' if kind is dict else kind.__name__})", value)
    return value


def _vector(summary: dict[str, Any], path: str, size: int) -> list[float] | None:
    """A list of `size` finite numbers at `path`, None when absent; any other shape is refused."""
    value = lookup(summary, path)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != size:
        raise _malformed(f"{path} (not {size} numbers)", value)
    found = [number(v, f"{path}[{i}]") for i, v in enumerate(value)]
    numbers = [v for v in found if v is not None]
    if len(numbers) != size:
        raise _malformed(f"{path} (not {size} numbers)", value)
    return numbers


def geometry_numbers(summary: dict[str, Any]) -> dict[str, float]:
    """Slice spacing, pixel spacing and field of view from the input's grid and direction (axial axis as infer's QC)."""
    spacing, shape = _vector(summary, "input.spacing_mm", 3), _vector(summary, "input.shape", 3)
    direction = lookup(summary, "input.direction")
    axial = 2
    if direction is not None:
        rows = _list_of(direction, list, "input.direction")
        if len(rows) != 3 or any(len(r) != 3 for r in rows):
            raise _malformed("input.direction (not a 3 x 3 matrix)", direction)
        z_row = _vector({"row": rows[2]}, "row", 3) or []
        axial = max(range(3), key=lambda a: abs(z_row[a]))
    if spacing is None or shape is None:
        return {}
    inplane = [a for a in range(3) if a != axial]
    extent = [spacing[a] * shape[a] for a in range(3)]
    found = {
        "slice_spacing_mm": spacing[axial],
        "pixel_spacing_mm": sum(spacing[a] for a in inplane) / 2,
        "fov_mm": min(extent[a] for a in inplane),
        "z_extent_mm": extent[axial],
    }
    for name, value in found.items():
        number(value, f"input grid ({name})")
    return found


def organs(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's organ records (a list of objects; null when the case has none)."""
    return _list_of(summary.get("organs"), dict, "organs")


def organ_numbers(summary: dict[str, Any]) -> dict[str, float]:
    """Per organ, each fact of features.yaml `organ` (volume, mean HU, the model's confidence signals) when present."""
    found: dict[str, float] = {}
    for i, organ in enumerate(organs(summary)):
        name = category(organ.get("name", "organ"), f"organs[{i}].name")
        for feature, paths in feature_paths()["organ"].items():
            for path in paths:
                value = lookup(organ, path)
                if isinstance(value, dict):
                    continue
                value = number(value, f"organs[{i}].{path}")
                if value is not None:
                    found[f"{feature}:{name}"] = value
                    break
    return found


STATUS_FLAGS = {"failed": "status_failed", "qc_rejected": "status_qc_rejected"}


def flag_codes(summary: dict[str, Any]) -> frozenset[str]:
    """QC flag codes of the case, `low_confidence` when an organ says so, and `status_failed` / `status_qc_rejected`
    when the case failed or was rejected (their rates are watched like any flag's)."""
    flags = _list_of(lookup(summary, "qc.flags"), dict, "qc.flags")
    codes = {category(f.get("code"), f"qc.flags[{i}].code") for i, f in enumerate(flags) if f.get("code") is not None}
    if any(organ.get("low_confidence") is True for organ in organs(summary)):
        codes.add("low_confidence")
    status = summary.get("status")
    if isinstance(status, str) and status in STATUS_FLAGS:
        codes.add(STATUS_FLAGS[status])
    return frozenset(c for c in codes if c)


def _structure(summary: dict[str, Any]) -> None:
    """Refuse a summary whose monitored sections are not objects (input, model, qc, software)."""
    for section in ("input", "model", "qc", "software", "input.acquisition"):
        value = lookup(summary, section)
        if value is not None and not isinstance(value, dict):
            raise _malformed(f"{section} (not an object)", value)


VOLATILE = ("timings_s", "failure")


def _stable_digest(summary: dict[str, Any]) -> str:
    """What names a case whose summary has no input digest (a failed run read no input): the summary without its
    timings and its error text (which names the input as the path was typed), so retrying the same failing input
    is one case, not one more failure per retry; the case name and exit code stay in it."""
    stable = {k: v for k, v in summary.items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def facts_from_summary(summary: Any, raw: bytes, origin: str, key: bytes) -> CaseFacts:
    """The monitored facts of one summary (`raw` is its file content, digested; `origin` kept only as a keyed ref)."""
    if not isinstance(summary, dict):
        raise InvalidInputError("the summary is not a JSON object", hint="Pass summaries written by `medseg infer`.")
    schema = str(summary.get("schema", ""))
    if not schema.startswith(SUMMARY_SCHEMA_PREFIX):
        raise InvalidInputError(
            f"not a medseg infer summary (schema {schema!r})", hint="Pass folders written by `medseg infer`."
        )
    _structure(summary)
    input_digest = lookup(summary, "input.sha256") or _stable_digest(summary)
    model_digest = lookup(summary, "model.sha256") or ""
    organ = str(summary.get("organ", ""))
    numbers = geometry_numbers(summary) | organ_numbers(summary)
    categories: dict[str, str] = {}
    for name, paths in feature_paths()["numeric"].items():
        path, value = _first(summary, paths)
        value = number(value, path)
        if value is not None:
            numbers[name] = value
    for name, paths in feature_paths()["categorical"].items():
        path, value = _first(summary, paths)
        if isinstance(value, str) and ".acquisition." in f".{path}":
            value = dicom_multi_value(value)
        categories[name] = category(value, path) if value is not None else NOT_RECORDED
    name = category(lookup(summary, "model.name"), "model.name")
    version = category(lookup(summary, "model.version"), "model.version")
    return CaseFacts(
        case_key=keyed_digest(f"{input_digest}\x00{organ}\x00{model_digest}", key),
        summary_sha256=hashlib.sha256(raw).hexdigest(),
        folder_ref=keyed_digest(origin, key),
        model=f"{name} {version}",
        status=category(summary.get("status", "unknown"), "status"),
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
    except (OSError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"cannot read the summary: {exc}", path=path, hint="Rerun `medseg infer`.") from exc
    try:
        return facts_from_summary(summary, raw, case_origin(Path(path).parent), key)
    except InvalidInputError as exc:
        exc.path = Path(path)
        raise
