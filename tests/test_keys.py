"""Key material: one place makes and reads signing key pairs and de-identification secrets."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.errors import UsageError
from medseg.keys import key_id, keypair_paths, load_private_key, load_public_key, read_secret, secret_id

MEDSEG = [sys.executable, "-m", "medseg"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDSEG, *args], capture_output=True, text=True, timeout=120)


def test_keys_generate_writes_a_private_0600_and_a_matching_pub(tmp_path: Path) -> None:
    done = _run("keys", "generate", "--out", str(tmp_path), "--name", "reviewer")
    assert done.returncode == 0, done.stderr
    private, public = keypair_paths(tmp_path, "reviewer")
    assert public.name.endswith(".pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert key_id(load_private_key(private).public_key()) == key_id(load_public_key(public))
    again = _run("keys", "generate", "--out", str(tmp_path), "--name", "reviewer")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_keys_secret_is_random_private_and_readable(tmp_path: Path) -> None:
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    assert _run("keys", "secret", str(a)).returncode == 0
    assert _run("keys", "secret", str(b)).returncode == 0
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    assert read_secret(a) != read_secret(b)
    assert len(read_secret(a)) == 64
    assert secret_id(read_secret(a)) != secret_id(read_secret(b))


def test_short_secret_is_refused_with_the_file_named(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("too short")
    with pytest.raises(UsageError) as info:
        read_secret(short)
    assert str(short) in info.value.one_line() and "at least 32" in info.value.one_line()


def test_audit_keygen_still_works_and_makes_the_same_kind_of_pair(tmp_path: Path) -> None:
    private, public = tmp_path / "a.pem", tmp_path / "a.pub.pem"
    done = _run("audit", "keygen", str(private), str(public))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert key_id(load_private_key(private).public_key()) == key_id(load_public_key(public))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_signing_key_other_users_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    """Like ssh, a private key readable by others is not used: whoever read it could sign reports and exports."""
    from medseg.keys import write_keypair

    private, _ = keypair_paths(tmp_path, "qa")
    write_keypair(*keypair_paths(tmp_path, "qa"))
    private.chmod(mode)
    with pytest.raises(UsageError, match=f"can be read by other users \\(mode {mode:04o}\\)"):
        load_private_key(private)
    private.chmod(0o600)
    assert load_private_key(private)


@pytest.mark.parametrize("out", ["existing.file", "existing.file/sub"])
def test_keys_generate_into_a_file_is_a_usage_error_not_an_internal_error(tmp_path: Path, out: str) -> None:
    """`keys generate --out <existing file>` said 'internal error: FileExistsError' (exit 4)."""
    (tmp_path / "existing.file").write_text("x\n")
    done = _run("keys", "generate", "--out", str(tmp_path / out), "--name", "qa")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / out}: ") and "another path" in lines[0].lower()
    assert "internal error" not in done.stderr and (tmp_path / "existing.file").read_text() == "x\n"


def test_keys_secret_under_a_file_is_a_usage_error_and_missing_folders_are_made(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x\n")
    done = _run("keys", "secret", str(tmp_path / "f" / "s.key"))
    assert done.returncode == 2 and f"{tmp_path / 'f'} is a file, not a folder" in done.stderr, done.stderr
    assert _run("keys", "secret", str(tmp_path / "new" / "s.key")).returncode == 0
    assert len(read_secret(tmp_path / "new" / "s.key")) == 64
