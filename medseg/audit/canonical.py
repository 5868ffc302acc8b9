"""Canonical JSON and SHA-256 chaining: the byte form every audit hash is computed over.

Canonical JSON here means: keys sorted, no insignificant whitespace, UTF-8, and no floating-point numbers at all
(floats are stored as their shortest round-trip decimal string), so any implementation re-derives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

GENESIS_HASH = "0" * 64
JsonValue = None | bool | int | str | list["JsonValue"] | dict[str, "JsonValue"]


def normalise(value: Any) -> JsonValue:
    """Map a parameter value to the float-free JSON subset; paths must be turned into references beforehand."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, Enum):
        return normalise(value.value)
    if isinstance(value, Mapping):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [normalise(v) for v in value]
        return sorted(items, key=canonical_json) if isinstance(value, set | frozenset) else items
    if isinstance(value, PurePath):
        raise TypeError("paths are not stored raw in the audit log; pass them through path_ref()")
    raise TypeError(f"unsupported audit value type {type(value).__name__}")


def canonical_json(value: JsonValue) -> str:
    """Serialise an already-normalised value to its one canonical text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(value: JsonValue) -> bytes:
    """The UTF-8 bytes of `canonical_json(value)`."""
    return canonical_json(value).encode("utf-8")


def chain_hash(prev_hash: str, body: Mapping[str, JsonValue]) -> str:
    """hash = SHA-256(prev_hash bytes || canonical(body)), hex; `body` excludes its own hash."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_bytes(dict(body))).hexdigest()
