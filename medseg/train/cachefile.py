"""Prepared arrays in the cache (`.npz`) carry the SHA-256 of their own arrays, checked on every read: a changed or
damaged cache file is prepared again from the digest-checked source files, never trained on."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

DIGEST_KEY = "content_sha256"


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_sources_unchanged(files: dict[str, Path], digests: dict[str, str]) -> None:
    """Refuse (InvalidInputError, exit 3) prepared data whose source files no longer have the SHA-256 the manifest
    gives and training verified: a file changed after verification was read, so what was prepared is unverified and
    is neither trained on nor cached under the manifest's digests."""
    from medseg.digests import digest_path
    from medseg.errors import InvalidInputError

    for role, path in files.items():
        expected = digests.get(role)
        if expected and digest_path(path) != expected:
            raise InvalidInputError(f"{role} changed while it was read (its SHA-256 no longer matches the manifest's); "
                                    "not trained on, not cached", path=path,
                                    hint="Restore the file the manifest names and run again.")  # fmt: skip


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` and their digest to `path` atomically."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays, **{DIGEST_KEY: np.asarray(arrays_digest(arrays))})
    os.replace(tmp, path)


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file whose digest matches them; None (and the file removed) when it does not."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        arrays = {}
    digest = arrays.pop(DIGEST_KEY, None)
    if digest is None or str(digest) != arrays_digest(arrays):
        path.unlink(missing_ok=True)
        return None
    return arrays
