"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A reader never sees a half-written output, and a killed process leaves only a `.tmp-*` file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import ProcessingError, UsageError


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless `overwrite` (UsageError, exit code 2)."""
    if path.exists() and not overwrite:
        raise UsageError("output already exists", path=path, hint="Pass --overwrite to replace it.")


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto `path`."""
    path = Path(path)
    check_writable(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", suffix="".join(path.suffixes), dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise ProcessingError(f"cannot write output: {exc.strerror}", path=path, hint="Check the folder.") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with tmp_path.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise ProcessingError(
            f"cannot write output: {exc.strerror}", path=path, hint="Check free disk space and permissions."
        ) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, overwrite: bool = False) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str, overwrite: bool = False) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), overwrite)
