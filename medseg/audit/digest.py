"""SHA-256 digests of files and folders, and keyed references to paths (paths can carry PHI)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from medseg import digests

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (`medseg.digests`, the one digest helper; this name is kept for callers)."""
    return digests.file_sha256(path)


def _is_regular(path: Path) -> bool:
    """True for a regular file or a link to one; pipes, sockets, devices and broken links are never opened."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def folder_digest(folder: Path) -> tuple[str, int, int]:
    """Digest over sorted (SHA-256 of relative path, SHA-256 of content) lines; returns (digest, files, bytes).

    Relative names are hashed as bytes (file names need not be UTF-8), not stored, because DICOM file names can
    carry patient names. Only regular files count: a named pipe would block the read, a device never ends.
    """
    folder = Path(folder)
    entries: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            full = Path(root) / name
            if not _is_regular(full):
                continue
            rel = os.fsencode(full.relative_to(folder).as_posix())
            entries.append((hashlib.sha256(rel).hexdigest(), full))
    entries.sort()
    h = hashlib.sha256()
    total = 0
    for rel_digest, full in entries:
        h.update(f"{rel_digest} {file_sha256(full)}\n".encode("ascii"))
        total += full.stat().st_size
    return h.hexdigest(), len(entries), total


def keyed_ref(text: str, key: bytes) -> str:
    """HMAC-SHA256 of `text` under the store's secret key: equal inputs match, but names cannot be guessed back."""
    return "hmac-sha256:" + hmac.new(key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def path_ref(path: Path, key: bytes) -> str:
    """A keyed reference to the absolute path: matches the same path again but reveals no name."""
    return keyed_ref(os.path.abspath(os.fspath(path)), key)


@dataclass(frozen=True)
class PathDigest:
    """What the log keeps about one input or output: a keyed path reference and its content digest."""

    ref: str
    type: str
    sha256: str | None
    files: int
    bytes: int

    def to_json(self) -> dict[str, str | int | None]:
        """The JSON form stored in an event."""
        return asdict(self)


def describe_path(path: Path, key: bytes) -> PathDigest:
    """Digest a file or folder; a missing or unreadable path is recorded as such rather than failing the command."""
    path = Path(path)
    ref = path_ref(path, key)
    try:
        if path.is_dir():
            digest, files, size = folder_digest(path)
            return PathDigest(ref, "folder", digest, files, size)
        if path.is_file():
            return PathDigest(ref, "file", file_sha256(path), 1, path.stat().st_size)
    except OSError:
        return PathDigest(ref, "unreadable", None, 0, 0)
    return PathDigest(ref, "missing", None, 0, 0)
