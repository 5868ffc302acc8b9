"""Audit write failures stop the command before it works (read-only folder, full disk); no unaudited output."""

from __future__ import annotations

import ctypes
import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from medseg.audit.config import load_config
from medseg.audit.store import AuditStore
from medseg.audit.verify import verify_store
from medseg.cli.audited import audited
from medseg.errors import AuditError, IntegrityError

PHANTOM = "dicom/mr_series_penn_prisma_phantom"
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 24, 1, 2, 3


def _drop_root_file_powers() -> None:
    """As root, mode bits do not apply; drop the capabilities that bypass them so 'read-only' means read-only."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _limit_file_size() -> None:
    """A full disk, as far as this process can tell: no file may grow past 1 byte (writes fail with EFBIG)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))


def _convert(shared: Path, out: Path, preexec: Callable[[], None]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "medseg", "convert", str(shared / PHANTOM), str(out)]
    return subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=120, preexec_fn=preexec)


def _seed_store() -> Path:
    """An existing store with one audited command in it; returns its folder."""
    with audited("convert", {}):
        pass
    return load_config().audit_dir


def _assert_stopped_unaudited(result: subprocess.CompletedProcess[str], out: Path) -> None:
    assert result.returncode == 4, result.stderr
    assert "audit" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def _assert_store_intact(records: int) -> None:
    with AuditStore.open(load_config(), create=False) as store:
        report = verify_store(store)
    assert report.ok and report.records == records, report.problems


def test_read_only_audit_folder_stops_the_command(shared: Path, tmp_path: Path) -> None:
    folder = _seed_store()
    files = list(folder.iterdir())
    for path in files:
        path.chmod(0o400)
    folder.chmod(0o500)
    try:
        result = _convert(shared, tmp_path / "out" / "ct.nii.gz", _drop_root_file_powers)
    finally:
        folder.chmod(0o700)
        for path in files:
            path.chmod(0o600)
    (tmp_path / "out").mkdir(exist_ok=True)
    _assert_stopped_unaudited(result, tmp_path / "out" / "ct.nii.gz")
    _assert_store_intact(records=2)


def test_uncreatable_audit_folder_stops_the_command(shared: Path, tmp_path: Path, monkeypatch) -> None:
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    monkeypatch.setenv("MEDSEG_AUDIT_DIR", str(parent / "audit"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _convert(shared, out_dir / "ct.nii.gz", _drop_root_file_powers)
    _assert_stopped_unaudited(result, out_dir / "ct.nii.gz")


def test_full_disk_stops_the_command(shared: Path, tmp_path: Path) -> None:
    _seed_store()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _convert(shared, out_dir / "ct.nii.gz", _limit_file_size)
    _assert_stopped_unaudited(result, out_dir / "ct.nii.gz")
    _assert_store_intact(records=2)


def test_audit_error_is_raised_before_the_work_runs(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("MEDSEG_AUDIT_DIR", str(blocker / "audit"))
    ran = False
    with pytest.raises(AuditError, match="audit"), audited("convert", {}):
        ran = True
    assert not ran


def test_output_is_removed_when_the_end_event_cannot_be_written(tmp_path: Path) -> None:
    out = tmp_path / "seg.nii.gz"
    anchor = load_config().anchor_path
    with pytest.raises(AuditError, match="removed 1 unaudited output"), audited("infer", {}) as rec:
        out.write_bytes(b"segmentation")
        rec.add_outputs([out])
        anchor.unlink()
        anchor.mkdir()  # the anchor can no longer be appended to: the end event's transaction rolls back
    assert not out.exists()
    anchor.rmdir()
    with AuditStore.open(load_config(), create=False) as store:
        assert store.head().seq == 1


def test_corrupt_audit_database_stops_the_command(shared: Path, tmp_path: Path) -> None:
    folder = _seed_store()
    db = folder / "audit.db"
    db.write_bytes(b"this is not an SQLite database" * 100)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _convert(shared, out_dir / "ct.nii.gz", lambda: None)
    _assert_stopped_unaudited(result, out_dir / "ct.nii.gz")


def test_foreign_sqlite_database_is_not_taken_over(shared: Path, tmp_path: Path) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    with sqlite3.connect(folder / "audit.db") as conn:
        conn.execute("CREATE TABLE patients (name TEXT)")
    for create, refused in ((False, IntegrityError), (True, AuditError)):  # a reader: exit 1; a command: exit 4
        with pytest.raises(refused, match="not a medseg audit database"):
            AuditStore.open(load_config(folder), create=create)
    with sqlite3.connect(folder / "audit.db") as conn:
        assert [name for (name,) in conn.execute("SELECT name FROM sqlite_master")] == ["patients"]


@pytest.mark.parametrize("how", ["deleted", "emptied", "replaced"])
def test_a_deleted_store_is_reported_as_lost_records_not_started_again(shared: Path, tmp_path: Path, how: str) -> None:
    """Deleting audit.db once looked like 'no audit store here. Check MEDSEG_AUDIT_DIR' (a setup problem) and the
    next command silently began a new chain; the anchor log proves records existed. An emptied (0 bytes) or
    replaced database must not start a new chain either."""
    folder = _seed_store()
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        (folder / name).unlink(missing_ok=True)
    if how == "emptied":
        (folder / "audit.db").write_bytes(b"")
    elif how == "replaced":
        with sqlite3.connect(folder / "audit.db") as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _convert(shared, out_dir / "ct.nii.gz", lambda: None)
    assert result.returncode == 4 and ("records were lost" in result.stderr or how == "replaced"), result.stderr
    assert not (out_dir / "ct.nii.gz").exists()
    assert how != "deleted" or not (folder / "audit.db").exists()
    verify = subprocess.run([sys.executable, "-m", "medseg", "audit", "verify"], env=dict(os.environ),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert verify.returncode == 1 and "records were lost" in verify.stderr, verify.stderr


def _damage(db: Path, how: str) -> None:
    """Overwrite audit.db with bytes that are not a (sound) SQLite database."""
    for name in ("audit.db-wal", "audit.db-shm"):
        (db.parent / name).unlink(missing_ok=True)
    if how == "junk":
        db.write_bytes(b"not a database\n")
    elif how == "truncated":
        db.write_bytes(db.read_bytes()[:4096])
    else:  # every page after the first overwritten: the header reads, the tables do not
        data = db.read_bytes()
        db.write_bytes(data[:4096] + b"\xa5" * (len(data) - 4096))


def _seed_checkpointed_store(records: int) -> Path:
    """A store with `records` audited commands, its WAL folded into audit.db (all content in the one file)."""
    for _ in range(records):
        with audited("convert", {}):
            pass
    folder = load_config().audit_dir
    with sqlite3.connect(folder / "audit.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return folder


@pytest.mark.parametrize("how", ["junk", "truncated", "pages overwritten"])
def test_a_damaged_store_is_lost_records_exit_1_for_verify_and_exit_4_for_commands(
    shared: Path, tmp_path: Path, how: str
) -> None:
    """audit.db overwritten with junk was exit 4 'cannot initialise the audit store ... free disk space or fix the
    permissions' (verify even tried to initialise it): it is damage, like a deleted store whose anchor names records."""
    folder = _seed_checkpointed_store(3)
    db = folder / "audit.db"
    _damage(db, how)
    damaged = db.read_bytes()
    verify = subprocess.run([sys.executable, "-m", "medseg", "audit", "verify"], env=dict(os.environ),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = verify.stderr.strip().splitlines()
    assert verify.returncode == 1, verify.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {db}: the audit store is damaged or not medseg's ("), lines
    assert "records were lost" in lines[0] and "Restore audit.db from a backup" in lines[0]
    assert "disk space" not in verify.stderr and "initialise" not in verify.stderr
    assert db.read_bytes() == damaged, "verify opens the store read-only: it never writes to it"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _convert(shared, out_dir / "ct.nii.gz", lambda: None)
    _assert_stopped_unaudited(result, out_dir / "ct.nii.gz")
    assert "records were lost" in result.stderr and "disk space" not in result.stderr, result.stderr
    assert db.read_bytes() == damaged


def test_a_damaged_store_without_an_anchor_is_still_an_integrity_failure(tmp_path: Path) -> None:
    folder = _seed_checkpointed_store(1)
    _damage(folder / "audit.db", "junk")
    (folder / "chain-anchor.log").unlink()
    with pytest.raises(IntegrityError, match=r"damaged or not medseg's \(file is not a database\)$") as exc:
        AuditStore.open(load_config(), create=False)
    assert exc.value.exit_code == 1 and "Restore audit.db from a backup" in exc.value.one_line()
    with pytest.raises(AuditError, match="damaged or not medseg's") as exc4:
        AuditStore.open(load_config())
    assert exc4.value.exit_code == 4 and "disk space" not in exc4.value.one_line()


def test_verify_opens_the_store_read_only(tmp_path: Path) -> None:
    """A reader never writes: the intact store's files are byte-for-byte the same after verify, and a write through
    a reader's connection is refused by SQLite."""
    folder = _seed_checkpointed_store(2)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "audit.db-shm"}
    with AuditStore.open(load_config(), create=False) as store:
        assert verify_store(store).ok
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store._conn.execute("CREATE TABLE x (y TEXT)")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "audit.db-shm"} == before
