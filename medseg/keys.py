"""All key material in one place: Ed25519 signing key pairs and keyed-hash secrets.

Signing keys sign audit exports and validation reports; secrets key the HMACs of de-identification (UIDs,
pseudonyms, date shifts). Private files are written atomically, owner-only (0600) from the first byte, and never
logged; a private file others can read is refused.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medseg.errors import UsageError
from medseg.io.atomic import atomic_write_bytes, check_writable, temporary_prefix

PASSPHRASE_ENV = "MEDSEG_AUDIT_KEY_PASSPHRASE"
MIN_SECRET_BYTES = 32
PUBLIC_SUFFIX = ".pub"


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as (private PEM, public PEM); the private PEM is encrypted when a passphrase is set."""
    key = Ed25519PrivateKey.generate()
    phrase = _passphrase()
    encryption = serialization.BestAvailableEncryption(phrase) if phrase else serialization.NoEncryption()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def make_key_folder(out_dir: Path) -> None:
    """Create the folder a key pair goes into (with its parents). A path that exists as a file, or that runs through
    a file, is the caller's mistake (UsageError, exit 2) rather than an internal error: --out names a folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError("exists and is not a folder", path=out_dir,
                         hint="--out takes a folder for NAME.key and NAME.key.pub: pass another path")  # fmt: skip
    try:
        _make_private_folders(out_dir)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UsageError("cannot be made a folder: a part of the path is a file", path=out_dir,
                         hint="Pass another path for --out") from exc  # fmt: skip
    except OSError as exc:
        raise UsageError(f"cannot create the folder: {exc.strerror}", path=out_dir,
                         hint="Pass a folder you can write") from exc  # fmt: skip


def _make_private_folders(out_dir: Path) -> None:
    """Create `out_dir` and its missing parents owner-only (0700, whatever the umask: under umask 000 the key folder
    was world-writable, so anyone could replace the key); folders that already exist are left as they are."""
    missing = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)


def _refuse_a_writable_folder(path: Path, what: str) -> None:
    """Private material in a folder that group or other users can write (without the sticky bit) is not used: they
    could replace it with their own key (UsageError, exit 2)."""
    folder = Path(path).resolve().parent
    mode = folder.stat().st_mode
    if stat.S_IMODE(mode) & 0o022 and not mode & stat.S_ISVTX:
        raise UsageError(f"the {what}'s folder can be written by other users (mode {stat.S_IMODE(mode):04o})",
                         path=path, hint=f"Restrict it: chmod 700 {folder}.")  # fmt: skip


def _require_no_file_on_the_way(path: Path) -> None:
    """The folders above a secret are made when missing; one that exists as a file is a usage error (exit 2), not a
    write failure (exit 4): the path was mistyped."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{parent} is a file, not a folder", path=path, hint="Pass another path")
            return


def write_keypair(private_path: Path, public_path: Path, overwrite: bool = False) -> None:
    """Write a new key pair: the private file with mode 0600, the public one 0644; both atomically."""
    remove_stale_temporaries(private_path)
    remove_stale_temporaries(public_path)
    check_writable(private_path, overwrite)
    check_writable(public_path, overwrite)
    private, public = generate_keypair()
    atomic_write_bytes(private_path, private, overwrite, private=True)
    atomic_write_bytes(public_path, public, overwrite)
    os.chmod(public_path, 0o644)


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files an earlier, killed write of `path` left beside it (`.tmp-NAME-*`, the atomic
    helper's names for this file only): one of a private key holds the key itself."""
    prefix = temporary_prefix(Path(path).name)
    folder = Path(path).parent
    if not folder.is_dir():
        return
    for stale in folder.glob(glob.escape(prefix) + "*"):
        if stale.is_file() and not stale.is_symlink():
            with contextlib.suppress(OSError):
                stale.unlink()


def keypair_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    """(private, public) file paths of the key pair NAME in OUT_DIR: NAME.key and NAME.key.pub."""
    private = Path(out_dir) / f"{name}.key"
    return private, private.with_name(private.name + PUBLIC_SUFFIX)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key (passphrase from MEDSEG_AUDIT_KEY_PASSPHRASE when encrypted)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=_passphrase())
    except (OSError, ValueError, TypeError) as exc:
        hint = f"Check the file and {PASSPHRASE_ENV}."
        raise UsageError(f"cannot read the signing key: {exc}", path=path, hint=hint) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(
            "the signing key is not an Ed25519 key", path=path, hint="Create one with `medseg keys generate`."
        )
    _refuse_readable_by_others(path, "signing key")
    _refuse_a_writable_folder(path, "signing key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot read the public key: {exc}", path=path, hint="Pass the .pub file from `medseg keys generate`."
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError("the public key is not an Ed25519 key", path=path)
    return key


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key (first 16 hex digits of the SHA-256 of its raw bytes)."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def write_secret(path: Path, overwrite: bool = False) -> None:
    """Write a new random secret (32 bytes as 64 hex digits and a newline) with mode 0600, atomically."""
    _require_no_file_on_the_way(path)
    remove_stale_temporaries(path)
    check_writable(path, overwrite)
    atomic_write_bytes(path, (secrets.token_hex(MIN_SECRET_BYTES) + "\n").encode("ascii"), overwrite, private=True)


def read_secret(path: Path) -> bytes:
    """The bytes of a secret key file (any content, at least 32 bytes; surrounding whitespace ignored)."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise UsageError(
            f"cannot read the key file: {exc.strerror}", path=path, hint="Create one with `medseg keys secret FILE`."
        ) from exc
    if len(data) < MIN_SECRET_BYTES:
        raise UsageError(
            f"the key file holds {len(data)} bytes; at least {MIN_SECRET_BYTES} are needed",
            path=path,
            hint="Create one with `medseg keys secret FILE`.",
        )
    _refuse_readable_by_others(path, "key file")
    return data


def _refuse_readable_by_others(path: Path, what: str) -> None:
    """Like ssh, private material that group or other users can read is not used: whoever read it could sign in
    this site's name or undo its pseudonyms (UsageError, exit 2)."""
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & 0o077:
        raise UsageError(f"the {what} can be read by other users (mode {mode:04o})", path=path,
                         hint=f"Restrict it: chmod 600 {path}.")  # fmt: skip


def secret_id(secret: bytes) -> str:
    """A fingerprint that names a secret in manifests and the audit trail without revealing it."""
    return hashlib.sha256(b"medseg-key-id\x00" + secret).hexdigest()[:16]
