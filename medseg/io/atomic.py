"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A reader never sees a half-written output, and a killed process leaves only a `.tmp-*` file behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import ProcessingError, UsageError
from medseg.guard import note_target, refuse_audit_folder

TEMPORARY_PREFIX = ".tmp-"


_READABLE_NAME_MAX = 120  # longer names get a digest in their temporary name: .tmp- + name + 8 + suffix < 255 bytes


def temporary_prefix(name: str) -> str:
    """The start of the temporary names of a write of `name`: `.tmp-NAME-`, or `.tmp-<16 hex of its SHA-256>-`
    for a long name (a valid 247-character output name failed with 'File name too long'). Every caller that finds
    a write's leftovers by name (keys' stale temporaries) uses this."""
    if len(name.encode("utf-8", "surrogateescape")) <= _READABLE_NAME_MAX:
        return f"{TEMPORARY_PREFIX}{name}-"
    return f"{TEMPORARY_PREFIX}{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}-"


def temporary_suffix(name: str) -> str:
    """The file-type suffix a temporary file keeps (writers choose the format by it: `.nii.gz` compresses): at most
    the last two suffixes, each short and not a number, so a dotted UID-like name does not double its length."""
    kept: list[str] = []
    for suffix in reversed(Path(name).suffixes[-2:]):
        if len(suffix) > 6 or suffix[1:].isdigit() or not suffix[1:]:
            break
        kept.insert(0, suffix)
    return "".join(kept)


def is_unfinished_write(name: str) -> bool:
    """True for the name of a temporary file of `atomic_path` (a write in progress, or one a killed process left):
    never input, since it may be half-written or renamed away while it is read."""
    return name.startswith(TEMPORARY_PREFIX)


def os_reason(exc: BaseException) -> str:
    """The one-line reason of a failed write: the first OSError in the exception's chain that names one (pydicom
    re-raises a disk-full error as a new OSError whose message is its whole traceback), else its first line."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse an output in the audit store's folders, and an existing output unless `overwrite` (UsageError, exit
    code 2)."""
    refuse_audit_folder(path)
    note_target(path)
    if path.exists() and not overwrite:
        raise UsageError("output already exists", path=path, hint="Pass --overwrite to replace it.")


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status), else the usual 022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = False, durable: bool = True, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto `path`.

    The file gets the mode an ordinary write would (0666 less the umask), so a pickup or forwarding account can read
    the results as the site's umask allows; `private` keeps mkstemp's 0600 (patient data held by a service).

    durable=False skips the fsync before the rename (the caller syncs a whole batch later with `sync_paths`):
    still never a half-written file after a crash of the process, but after a power loss a renamed file may be
    incomplete until that batch sync, so the caller must be able to detect and redo it.
    """
    path = Path(path)
    check_writable(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=temporary_suffix(path.name),
                                   dir=path.parent)  # fmt: skip
        if not private:
            os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
    except OSError as exc:
        message = f"cannot write output: {os_reason(exc)}"
        raise ProcessingError(message, path=path, hint="Check the folder.") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with tmp_path.open("rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise ProcessingError(
            f"cannot write output: {os_reason(exc)}", path=path, hint="Check free disk space and permissions."
        ) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(
    path: Path, data: bytes, overwrite: bool = False, durable: bool = True, private: bool = False
) -> None:
    """Write `data` to `path` atomically; `private`: owner-only (0600) from the moment the temporary file exists, so
    key material is never readable by others, not even while it is written or after a kill."""
    with atomic_path(path, overwrite, durable, private=private) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str, overwrite: bool = False, durable: bool = True) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), overwrite, durable)


def _syncfs(fd: int) -> bool:
    """Flush the whole filesystem holding `fd` in one call (Linux syncfs); False where it is not available."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    if syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_paths(paths: list[Path]) -> None:
    """Make a batch written with durable=False durable: one syncfs per filesystem (Linux), else an fsync of
    each file and then of each folder holding one."""
    if not paths:
        return
    try:
        folders = list(dict.fromkeys(p.parent for p in paths))
        devices: dict[int, Path] = {}
        for folder in folders:
            devices.setdefault(os.stat(folder).st_dev, folder)
        fd = os.open(next(iter(devices.values())), os.O_RDONLY)
        try:
            done = len(devices) == 1 and _syncfs(fd)
        finally:
            os.close(fd)
        if not done:
            for path in [*dict.fromkeys(paths), *folders]:
                _fsync(path)
    except OSError as exc:
        raise ProcessingError(
            f"cannot sync outputs to disk: {exc.strerror}", path=Path(exc.filename or "."), hint="Check the disk."
        ) from exc


def staging_folder(final: Path) -> Path:
    """A new empty folder beside `final` (same filesystem, hidden `.tmp-` name) where a set of outputs is written
    before `commit_folder` moves it into place."""
    refuse_audit_folder(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=temporary_prefix(final.name), dir=final.parent))
        stage.chmod(0o777 & ~_umask())
    except OSError as exc:
        raise ProcessingError(f"cannot write output: {os_reason(exc)}", path=final.parent,
                              hint="Check the folder and its permissions.") from exc  # fmt: skip
    return stage


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the kernel, C library or
    filesystem cannot, so the caller falls back to two renames."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(stage: Path, final: Path) -> Path:
    """Put `stage` in the place of the existing folder `final` and return where the old folder now is: one atomic
    exchange where the system has it; else two renames, the old folder put back if the second fails."""
    if _exchange(stage, final):
        return stage
    old = Path(tempfile.mkdtemp(prefix=f"{temporary_prefix(final.name)}old-", dir=final.parent))
    os.rename(final, old / final.name)
    try:
        os.rename(stage, final)
    except OSError:
        os.rename(old / final.name, final)
        old.rmdir()
        raise
    return old


def _keep(src: Path, dst: Path) -> None:
    """Carry a file of the earlier folder into the new one: a hard link, a copy where the filesystem has none."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _move_folders(old: Path, final: Path, names: list[str]) -> None:
    """After the swap, move the folders of the earlier `final` across (folders cannot be hard-linked) and remove
    what is left of it. The new set is in place by then, so a failure only keeps the old folder, hidden, with
    whatever it still holds."""
    try:
        for name in names:
            os.rename(old / name, final / name)
    except OSError:
        return
    shutil.rmtree(old, ignore_errors=True)


def commit_folder(stage: Path, final: Path, stale: set[str]) -> None:
    """Replace the set of outputs in `final` by the files of `stage`, all or nothing.

    A new `final` is one rename. An existing one is swapped whole for `stage` (`_swap_in`) after the files of
    `final` that this set neither replaces nor makes `stale` (earlier outputs it does not write) are hard-linked
    into `stage`, so other files in the folder stay; a failure or a kill at any point leaves the earlier set exactly
    as it was (at worst beside a hidden `.tmp-` folder), never a mix of two runs."""
    try:
        if final.exists():
            ours = {p.name for p in stage.iterdir()}
            for name in ours:
                note_target(final / name)
            folders = []
            for entry in final.iterdir():
                if entry.name in ours or entry.name in stale or is_unfinished_write(entry.name):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    folders.append(entry.name)
                else:
                    _keep(entry, stage / entry.name)
            old = _swap_in(stage, final)
            _move_folders(old, final, folders)
        else:
            os.rename(stage, final)
        _fsync(final.parent)
    except OSError as exc:
        raise ProcessingError(f"cannot move the outputs into place: {os_reason(exc)}", path=final,
                              hint="Check free disk space and permissions.") from exc  # fmt: skip
