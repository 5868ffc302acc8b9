"""Data files: where the shared data lives (one rule for training, validation and benches) and SHA-256 of files
(one helper, hashlib.file_digest, for model weights, inputs, audit digests and copies)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

from medseg.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[1]


def default_data_root() -> Path:
    """`$MEDSEG_DATA_ROOT`, else `../shared/data` next to the repository."""
    return Path(os.environ.get("MEDSEG_DATA_ROOT", REPO.parent / "shared" / "data"))


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


def digest_path(path: Path) -> str:
    """SHA-256 of a file, or of a folder as the digest of its sorted (relative path, file digest) list.

    The one definition behind training manifests and locked validation sets, so their digests can be compared. A
    missing path is InvalidInputError (exit 3) whose hint names MEDSEG_DATA_ROOT, which every caller reads (only
    `medseg train` has a --data-root option, so it is named as train's).
    """
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
        return h.hexdigest()
    raise InvalidInputError(
        "data file missing",
        path=path,
        hint="Check MEDSEG_DATA_ROOT (for `medseg train`: --data-root), the folder the shared data lies in",
    )
