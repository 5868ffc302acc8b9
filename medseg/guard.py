"""Where no command output may land, and which outputs the running audited block will write: shared by the writers
(`medseg.io.atomic`) and the audit trail (`medseg.audit.session`), which may not import each other."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import UsageError


def default_audit_dir() -> Path:
    """The per-user default folder, following the XDG base-directory convention."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "medseg" / "audit"


def store_folders() -> tuple[Path, Path]:
    """The audit folder and the anchor folder the environment names (MEDSEG_AUDIT_DIR, MEDSEG_AUDIT_ANCHOR_DIR, else
    the default), read without checking MEDSEG_OPERATOR: what no command output may land in."""
    folder = Path(os.environ.get("MEDSEG_AUDIT_DIR") or default_audit_dir()).expanduser()
    anchor = Path(os.environ.get("MEDSEG_AUDIT_ANCHOR_DIR") or folder).expanduser()
    return folder, anchor


_GUARDED: list[Path] = []
_TARGETS: list[dict[Path, bool]] = []


@contextlib.contextmanager
def guarding(folders: list[Path], targets: dict[Path, bool] | None = None) -> Iterator[None]:
    """While the block runs, refuse any output inside `folders` too (an audited command's store and anchor folders,
    when they were named with --audit-dir rather than the environment), and note in `targets`, for each output path
    the first time it is checked, whether it existed then (`note_target`)."""
    _GUARDED.extend(folders)
    _TARGETS.append(targets if targets is not None else {})
    try:
        yield
    finally:
        _TARGETS.pop()
        for folder in folders:
            _GUARDED.remove(folder)


def note_target(path: Path) -> None:
    """Tell the running audited block that `path` is about to be written and whether it exists now (first sight
    only): a file that existed before the command is never removed as an 'unaudited output' of it."""
    if _TARGETS:
        _TARGETS[-1].setdefault(resolved(Path(path)), Path(path).exists())


def resolved(path: Path) -> Path:
    """`path` made absolute with every symbolic link that exists on the way followed."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def refuse_audit_folder(path: Path) -> None:
    """Refuse an output that is, or lies inside, the audit store's folder or the anchor folder (UsageError, exit 2,
    nothing written): `--overwrite` onto audit.db or chain-anchor.log replaced the trail itself."""
    target = resolved(Path(path))
    for folder in [*_GUARDED, *store_folders()]:
        guarded = resolved(folder)
        if target == guarded or guarded in target.parents:
            raise UsageError("output lies in the audit store's folder", path=path,
                             hint=f"Write outputs outside {guarded}: it holds the audit trail.")  # fmt: skip
