"""Where medseg keeps what it can rebuild (model exports, prepared training cases, trimmed standard tables):
`$MEDSEG_CACHE_DIR`, else `~/.cache/medseg`; never inside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    return Path(os.environ.get("MEDSEG_CACHE_DIR", Path.home() / ".cache" / "medseg"))


def cache_subdir(*parts: str, root: Path | None = None) -> Path:
    """`root/parts...` (root: `cache_dir()`), each missing folder from the root down created owner-only (0700).

    Every cache user goes through this: the model export cache refuses a folder others may write (whoever can write
    it can change what the model computes), so a cache root made 0775 under umask 002 by the SEG writer or
    `medseg train` would lock the user out of it. Folders that exist are left as they are. Raises OSError."""
    base = root if root is not None else cache_dir()
    base.parent.mkdir(parents=True, exist_ok=True)
    folder = base
    folder.mkdir(mode=0o700, exist_ok=True)
    for part in parts:
        folder = folder / part
        folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def unsafe_cache_entry(folder: Path, root: Path, files: bool = False) -> tuple[Path, str] | None:
    """The first folder from `root` down to `folder` (and, with `files`, the files in `folder`) that another user
    owns or that its group or others may write, with why; None when all are the caller's own and owner-writable
    only. What runs from the cache must be as trusted as the installed package."""
    parts = folder.relative_to(root).parts
    chain = [root, *(root.joinpath(*parts[: i + 1]) for i in range(len(parts)))]
    for entry in chain + (sorted(folder.iterdir()) if files else []):
        st = entry.stat()
        if st.st_uid != os.getuid():
            return entry, "is owned by another user"
        if st.st_mode & 0o022:
            return entry, "is writable by other users"
    return None

