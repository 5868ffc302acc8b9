"""The monitor store: one SQLite file of per-case facts in arrival order, without patient identity.

Tables hold keyed digests, content digests, numbers, short category values and QC flag codes only. The key for the
keyed digests is made at creation and stays inside the file (as the audit store keeps its path key); it is never
exported. Adding a case whose key is already stored does nothing, so collecting again adds only new cases.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medseg.errors import InvalidInputError, ProcessingError
from medseg.monitor.facts import CaseFacts

SCHEMA_VERSION = "medseg.monitor.store/1"
DDL = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    case_key TEXT NOT NULL UNIQUE,
    summary_sha256 TEXT NOT NULL,
    folder_ref TEXT NOT NULL,
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS numbers (seq INTEGER NOT NULL REFERENCES cases(seq), name TEXT NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (seq, name));
CREATE TABLE IF NOT EXISTS categories (seq INTEGER NOT NULL REFERENCES cases(seq), name TEXT NOT NULL,
    value TEXT NOT NULL, PRIMARY KEY (seq, name));
CREATE TABLE IF NOT EXISTS flags (seq INTEGER NOT NULL REFERENCES cases(seq), code TEXT NOT NULL,
    PRIMARY KEY (seq, code));
"""


class MonitorStore:
    """An open monitor database (use `MonitorStore.open(path)` as a context manager)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    @contextmanager
    def open(cls, path: Path, create: bool = False, readonly: bool = False) -> Iterator[MonitorStore]:
        """Open (or with `create`, make) the store; `readonly` opens it without writing anything (a read-only mount).

        A file that is not a monitor store raises InvalidInputError; a store or folder that cannot be written when
        building raises ProcessingError naming it.
        """
        path = Path(path)
        if not create and not path.is_file():
            raise InvalidInputError("monitor store not found", path=path, hint="Make it with `medseg monitor build`.")
        if create:
            _check_writable(path)
            _refuse_foreign(path)
        conn = _connect_readonly(path) if readonly else _connect_writable(path)
        try:
            store = cls(conn, path)
            store._init(create and not readonly)
        except sqlite3.OperationalError as exc:
            conn.close()
            if create and _is_write_failure(exc):
                raise _cannot_write(path, exc) from exc
            raise InvalidInputError(f"not a monitor store: {exc}", path=path, hint="Pass a monitor.db.") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise InvalidInputError(f"not a monitor store: {exc}", path=path, hint="Pass a monitor.db.") from exc
        except BaseException:
            conn.close()
            raise
        try:
            yield store
        finally:
            conn.close()

    def _init(self, create: bool) -> None:
        if create:
            self.conn.executescript(DDL)
            with self.transaction():
                for name, value in (("schema", SCHEMA_VERSION), ("case_key_secret", secrets.token_hex(32))):
                    self.conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, value))
        row = self.conn.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            raise InvalidInputError(
                f"not a monitor store (schema {row[0] if row else None!r})", path=self.path, hint="Pass a monitor.db."
            )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write: everything inside is committed together or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @property
    def secret(self) -> bytes:
        """The key of this store's keyed digests (never exported)."""
        return bytes.fromhex(self.conn.execute("SELECT value FROM meta WHERE name='case_key_secret'").fetchone()[0])

    @property
    def newest_written_ns(self) -> int | None:
        """Modification time of the newest summary collected so far (one value for the store, no per-case time)."""
        row = self.conn.execute("SELECT value FROM meta WHERE name='newest_summary_ns'").fetchone()
        return int(row[0]) if row else None

    def known(self, case_key: str) -> bool:
        """Whether a case with this key is already stored."""
        return self.conn.execute("SELECT 1 FROM cases WHERE case_key=?", (case_key,)).fetchone() is not None

    def add(self, facts: Iterable[CaseFacts], source: str = "summary", newest_ns: int | None = None) -> int:
        """Append new cases in the given order in one transaction (with `newest_ns`, the newest summary's time, kept
        if newer than the stored one); returns how many were new."""
        added = 0
        try:
            with self.transaction():
                if newest_ns is not None:
                    self.conn.execute(
                        "INSERT INTO meta VALUES ('newest_summary_ns', ?) ON CONFLICT(name) DO UPDATE SET "
                        "value = CAST(MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)",
                        (str(newest_ns),),
                    )
                for f in facts:
                    cur = self.conn.execute(
                        "INSERT OR IGNORE INTO cases (case_key, summary_sha256, folder_ref, source, model, status) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (f.case_key, f.summary_sha256, f.folder_ref, source, f.model, f.status),
                    )
                    if cur.rowcount == 0:
                        continue
                    seq = cur.lastrowid
                    self.conn.executemany(
                        "INSERT INTO numbers VALUES (?, ?, ?)", [(seq, k, v) for k, v in f.numbers.items()]
                    )
                    self.conn.executemany(
                        "INSERT INTO categories VALUES (?, ?, ?)", [(seq, k, v) for k, v in f.categories.items()]
                    )
                    self.conn.executemany("INSERT INTO flags VALUES (?, ?)", [(seq, c) for c in sorted(f.flags)])
                    added += 1
        except sqlite3.Error as exc:
            raise ProcessingError(f"cannot write the monitor store: {exc}", path=self.path) from exc
        return added

    def cases(self) -> list[CaseFacts]:
        """Every stored case in arrival order."""
        numbers: dict[int, dict[str, float]] = {}
        categories: dict[int, dict[str, str]] = {}
        flags: dict[int, set[str]] = {}
        for seq, name, value in self.conn.execute("SELECT seq, name, value FROM numbers"):
            numbers.setdefault(seq, {})[name] = value
        for seq, name, value in self.conn.execute("SELECT seq, name, value FROM categories"):
            categories.setdefault(seq, {})[name] = value
        for seq, code in self.conn.execute("SELECT seq, code FROM flags"):
            flags.setdefault(seq, set()).add(code)
        rows = self.conn.execute(
            "SELECT seq, case_key, summary_sha256, folder_ref, model, status FROM cases ORDER BY seq"
        )
        return [
            CaseFacts(
                key,
                digest,
                ref,
                model,
                status,
                numbers.get(seq, {}),
                categories.get(seq, {}),
                frozenset(flags.get(seq, set())),
            )
            for seq, key, digest, ref, model, status in rows
        ]


def _refuse_foreign(path: Path) -> None:
    """Refuse, before anything is written, an existing SQLite file that is not a monitor store (a pacs.db, mlflow.db
    or the audit trail passed as --out by mistake): building into it would add tables and a key to someone else's
    database. An empty file or a database without tables may become a store."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    conn = _connect_readonly(path)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        row = conn.execute("SELECT value FROM meta WHERE name='schema'").fetchone() if "meta" in tables else None
    except sqlite3.DatabaseError as exc:
        raise InvalidInputError(f"not a monitor store: {exc}", path=path, hint="Pass a monitor.db.") from exc
    finally:
        conn.close()
    if tables and (row is None or row[0] != SCHEMA_VERSION):
        raise InvalidInputError(
            f"not a monitor store (tables: {', '.join(sorted(tables)[:4])}): nothing written to it",
            path=path,
            hint="Pass --out a new file or a monitor.db made by `medseg monitor build`.",
        )


def _cannot_write(path: Path, reason: object) -> ProcessingError:
    """The error for a store (or its folder) that cannot be written."""
    return ProcessingError(
        f"cannot write the monitor store: {reason}",
        path=path,
        hint="Pass --out in a folder you can write to (a store on a read-only mount can only be reported on).",
    )


def _is_write_failure(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed because it may not write (read-only file, folder or mount), not because of the data."""
    text = str(exc).lower()
    return any(word in text for word in ("readonly", "read-only", "unable to open", "disk i/o"))


def _check_writable(path: Path) -> None:
    """Refuse to build into a folder or file this process cannot write (the store, its journal and WAL files)."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(path, exc.strerror or exc) from exc
    for target in (folder, path) if path.exists() else (folder,):
        if not os.access(target, os.W_OK):
            raise _cannot_write(path, "read-only " + ("folder" if target == folder else "file"))


def _connect_writable(path: Path) -> sqlite3.Connection:
    """A read-write connection in WAL mode with full fsync (a crash keeps the store as it was before the build)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.OperationalError as exc:
        raise _cannot_write(path, exc) from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.OperationalError as exc:
        conn.close()
        if _is_write_failure(exc):
            raise _cannot_write(path, exc) from exc
        raise InvalidInputError(f"not a monitor store: {exc}", path=path, hint="Pass a monitor.db.") from exc
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InvalidInputError(f"not a monitor store: {exc}", path=path, hint="Pass a monitor.db.") from exc
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; where SQLite cannot share a WAL store read-only (no -shm file on a read-only mount),
    the file is opened as immutable, which is safe because nothing can write it there."""
    uri = path.resolve().as_uri()
    last: sqlite3.Error | None = None
    for mode in ("mode=ro", "mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(f"{uri}?{mode}", uri=True, isolation_level=None)
        except sqlite3.OperationalError as exc:
            last = exc
            continue
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            conn.close()
            last = exc
            continue
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise InvalidInputError(f"not a monitor store: {exc}", path=path, hint="Pass a monitor.db.") from exc
        return conn
    raise InvalidInputError(f"cannot read the monitor store: {last}", path=path, hint="Check the file's permissions.")
