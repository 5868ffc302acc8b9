"""Where medseg keeps what it can rebuild (model exports, prepared training cases, trimmed standard tables):
`$MEDSEG_CACHE_DIR`, else `~/.cache/medseg`; never inside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    return Path(os.environ.get("MEDSEG_CACHE_DIR", Path.home() / ".cache" / "medseg"))
