"""SHA-256 of files: one helper (hashlib.file_digest) for model weights, inputs, audit digests and copies."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from os import PathLike


def file_sha256(path: str | PathLike[str]) -> str:
    """Hex SHA-256 of one file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def files_sha256(paths: Iterable[str | PathLike[str]]) -> str:
    """Hex SHA-256 of the files' bytes one after the other (e.g. a series' slices in slice order)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            hashlib.file_digest(f, lambda: h)
    return h.hexdigest()
