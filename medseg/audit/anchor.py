"""The chain-head anchor: an append-only text log of heads kept outside the database.

Each append writes `P <seq> <hash>` while it holds the database write lock (before COMMIT) and `C <seq> <hash>`
after COMMIT. Deleting or rewriting the tail of the database then disagrees with the anchor unless the anchor is
rewritten too; keeping it on another volume (MEDSEG_AUDIT_ANCHOR_DIR) makes that a second, separate step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AnchorEntry:
    """One line of the anchor: 'P' (written before commit) or 'C' (after commit), sequence number and hash."""

    state: str
    seq: int
    hash: str


def append_anchor(path: Path, state: str, seq: int, hash_hex: str, *, sync: bool = True) -> None:
    """Append one line (fsync'ed when `sync`); O_APPEND keeps concurrent small writes whole."""
    line = f"{state} {seq} {hash_hex}\n".encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(28, "short write to the audit anchor")
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_anchor(path: Path) -> tuple[list[AnchorEntry], list[int]]:
    """All well-formed entries, plus the line numbers of malformed ones (a torn last line after a crash)."""
    entries: list[AnchorEntry] = []
    bad: list[int] = []
    if not path.exists():
        return entries, bad
    for number, line in enumerate(path.read_text("ascii", errors="replace").splitlines(), start=1):
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("P", "C") and parts[1].isdigit() and len(parts[2]) == 64:
            entries.append(AnchorEntry(parts[0], int(parts[1]), parts[2]))
        else:
            bad.append(number)
    return entries, bad
