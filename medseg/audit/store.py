"""The SQLite audit store: WAL mode, one `BEGIN IMMEDIATE` transaction per append, append-only triggers.

Concurrent writers (batch workers, parallel runs) serialise on SQLite's write lock, so each append reads the
chain head, links to it and moves it inside one transaction: the chain cannot fork or leave gaps.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from medseg.audit.anchor import append_anchor, read_anchor
from medseg.audit.canonical import GENESIS_HASH, canonical_json, chain_hash, normalise
from medseg.audit.config import AuditConfig
from medseg.audit.record import AuditEvent, ChainedRecord
from medseg.errors import AuditError, IntegrityError

BUSY_TIMEOUT_S = 60.0
NEW_STORE_WAIT_S = 3.0  # a reader's wait for the schema of a store being created (`_initialised_soon`)
# SQLite's primary result codes for a file whose content is not a (sound) database: damage or tampering, which no
# free disk space or permission change repairs (SQLITE_CORRUPT, SQLITE_NOTADB).
DAMAGED_CODES = (11, 26)
_APPEND_ONLY = "medseg audit: events are append-only"
DDL = (
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, invocation TEXT NOT NULL,
        command TEXT NOT NULL, os_user TEXT NOT NULL, operator TEXT, outcome TEXT NOT NULL,
        body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS chain_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, "
    "hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_ts ON events(ts)",
    "CREATE INDEX IF NOT EXISTS events_invocation ON events(invocation)",
    f"""CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
    """CREATE TRIGGER IF NOT EXISTS events_link BEFORE INSERT ON events
        WHEN NEW.seq != (SELECT seq FROM chain_head WHERE id = 1) + 1
          OR NEW.prev_hash != (SELECT hash FROM chain_head WHERE id = 1)
        BEGIN SELECT RAISE(ABORT, 'medseg audit: new event does not link to the chain head'); END""",
    """CREATE TRIGGER IF NOT EXISTS head_forward BEFORE UPDATE ON chain_head
        WHEN NEW.seq != OLD.seq + 1 OR NEW.hash IS NOT (SELECT hash FROM events WHERE seq = NEW.seq)
        BEGIN SELECT RAISE(ABORT, 'medseg audit: the chain head only moves forward to the newest event'); END""",
    """CREATE TRIGGER IF NOT EXISTS head_no_delete BEFORE DELETE ON chain_head
        BEGIN SELECT RAISE(ABORT, 'medseg audit: the chain head cannot be deleted'); END""",
    """CREATE TRIGGER IF NOT EXISTS meta_no_update BEFORE UPDATE ON meta
        BEGIN SELECT RAISE(ABORT, 'medseg audit: store metadata is write-once'); END""",
    """CREATE TRIGGER IF NOT EXISTS meta_no_delete BEFORE DELETE ON meta
        BEGIN SELECT RAISE(ABORT, 'medseg audit: store metadata is write-once'); END""",
)


def utc_now() -> str:
    """Current UTC time, ISO 8601 with microseconds and a 'Z' suffix."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Head:
    """The chain head as kept in the `chain_head` table."""

    seq: int
    hash: str


def _enable_wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL, retrying while another process holds the lock: SQLite answers "database is locked" at once
    for this pragma (no busy handler), so writers creating a store together failed at random (found by the
    concurrency test under pytest-xdist)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class AuditStore:
    """An open audit database; create with `AuditStore.open(config)` and close when done."""

    def __init__(self, config: AuditConfig, conn: sqlite3.Connection) -> None:
        self.config = config
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config: AuditConfig, *, create: bool = True) -> AuditStore:
        """Open (and with `create`, initialise) the store; any failure is an AuditError naming the folder.

        Without `create` (verify, show, export, signing checks) the database is opened read-only: a reader never
        initialises, converts or repairs it. A file that is not a sound SQLite database (overwritten, truncated) is
        damage, not a full disk: IntegrityError for a reader (exit 1), AuditError for a command (exit 4), both
        saying that records were lost when the anchor log names any."""
        db = config.db_path
        failure = IntegrityError if not create else AuditError
        _refuse_a_file_as_folder(config)
        if not db.exists() or db.stat().st_size == 0:
            _refuse_a_lost_store(config, failure)
        if not create and not db.exists():
            raise AuditError("no audit store here", path=config.audit_dir, hint="Check MEDSEG_AUDIT_DIR.")
        try:
            if create:
                config.audit_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                config.anchor_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not db.exists():  # owner-only: the store holds the path key; SQLite gives -wal/-shm the same mode
                    os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
                target, uri = str(db), False
            else:
                target, uri = f"file:{quote(str(db.resolve()))}?mode=ro", True
            conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False,
                                   uri=uri)  # fmt: skip
        except (OSError, sqlite3.Error) as exc:
            raise _audit_error("cannot open the audit store", config.audit_dir, exc) from exc
        store = cls(config, conn)
        try:
            if create:
                mode = _enable_wal(conn)
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"journal mode is {mode}, WAL needed")
                conn.execute("PRAGMA synchronous=FULL")
                store._init_schema()
            elif store._meta("store_id") is None and not _initialised_soon(store):
                try:
                    _refuse_a_lost_store(config, IntegrityError)
                except IntegrityError:
                    conn.close()
                    raise
                empty = not conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
                conn.close()
                raise _not_a_store(config, empty)
        except sqlite3.Error as exc:
            conn.close()
            if is_damage(exc):
                raise damaged_store_error(config, exc, failure) from exc
            raise _audit_error("cannot initialise the audit store", db, exc) from exc
        return store

    def _init_schema(self) -> None:
        if self._meta("store_id") is not None:
            return
        with self._transaction():
            if self._meta("store_id") is not None:
                return  # another process initialised it while we waited for the lock
            if self._conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                raise sqlite3.DatabaseError("not a medseg audit database (it has other tables)")
            for statement in DDL:
                self._conn.execute(statement)
            self._conn.execute("INSERT INTO chain_head (id, seq, hash) VALUES (1, 0, ?)", (GENESIS_HASH,))
            for key, value in (
                ("schema", "medseg.audit/1"),
                ("store_id", str(uuid.uuid4())),
                ("created", utc_now()),
                ("path_key", secrets.token_hex(32)),
            ):
                self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _has_table(self, name: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        return row is not None

    def _meta(self, key: str) -> str | None:
        if not self._has_table("meta"):
            return None
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    @property
    def store_id(self) -> str:
        """The random identity of this store, written once at creation."""
        return self._meta("store_id") or ""

    @property
    def path_key(self) -> bytes:
        """The secret key for path references (kept in the database, never exported)."""
        return bytes.fromhex(self._meta("path_key") or "")

    def head(self) -> Head:
        """The chain head from the `chain_head` table."""
        row = self._conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
        return Head(0, GENESIS_HASH) if row is None else Head(int(row[0]), str(row[1]))

    def append(self, event: AuditEvent | Callable[[], AuditEvent]) -> ChainedRecord:
        """Link `event` to the head, insert it and move the head, all in one IMMEDIATE transaction.

        `event` may be a function that makes it: called once the write lock is held, so the event describes the
        moment it is written (an end event records an interrupt that came while it waited for the lock)."""
        with self._lock:
            try:
                with self._transaction():
                    if callable(event):
                        event = event()
                    head = self.head()
                    seq = head.seq + 1
                    body = normalise(event.body(seq, utc_now(), head.hash))
                    assert isinstance(body, dict)
                    digest = chain_hash(head.hash, body)
                    self._conn.execute(
                        "INSERT INTO events (seq, ts, kind, invocation, command, os_user, operator, outcome, body, "
                        "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            seq, body["ts"], event.kind, event.invocation, event.command, event.os_user,
                            event.operator, event.outcome, canonical_json(body), head.hash, digest,
                        ),
                    )  # fmt: skip
                    self._conn.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
                    append_anchor(self.config.anchor_path, "P", seq, digest)
            except (OSError, sqlite3.Error) as exc:
                raise _audit_error("cannot write the audit trail", self.config.audit_dir, exc) from exc
            with contextlib.suppress(OSError):  # the 'P' line written under the lock already anchors this record
                append_anchor(self.config.anchor_path, "C", seq, digest, sync=False)
            return ChainedRecord(seq, digest, body)

    def records(self, after_seq: int = 0) -> Iterator[ChainedRecord]:
        """Stored records in sequence order, from the rows as they are (verification re-checks everything)."""
        cursor = self._conn.execute("SELECT seq, hash, body FROM events WHERE seq > ? ORDER BY seq", (after_seq,))
        for seq, digest, body in cursor:
            yield ChainedRecord(int(seq), str(digest), _load_body(body))

    def select(self, sql: str, args: list[object]) -> list[ChainedRecord]:
        """Run a read-only SELECT returning (seq, hash, body) rows."""
        return [ChainedRecord(int(q), str(h), _load_body(b)) for q, h, b in self._conn.execute(sql, args)]

    def execute_scalar_column(self, sql: str, args: tuple[object, ...] = ()) -> list[object]:
        """Run a read-only SELECT returning one column."""
        return [row[0] for row in self._conn.execute(sql, args)]

    def rows(self) -> Iterator[tuple[int, str, str, str, str, str, str | None, str, str, str, str]]:
        """Raw rows including the indexed columns, for verification that columns match bodies."""
        yield from self._conn.execute(
            "SELECT seq, ts, kind, invocation, command, os_user, operator, outcome, body, prev_hash, hash "
            "FROM events ORDER BY seq"
        )

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every query inside sees the same committed state, whatever writers do meanwhile."""
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("ROLLBACK")

    def hash_at(self, seq: int) -> str | None:
        """The stored hash of record `seq` now (outside any snapshot), or None."""
        row = self._conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        self._conn.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _load_body(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {"_unparseable": text}
    return value if isinstance(value, dict) else {"_unparseable": text}


def _initialised_soon(store: AuditStore) -> bool:
    """Whether an empty store gets its schema within NEW_STORE_WAIT_S: a reader that opens the store while the first
    command creates it (file made, schema not yet committed) waits for that, instead of calling the new trail
    emptied (exit 1). Another application's tables are not waited for."""
    deadline = time.monotonic() + NEW_STORE_WAIT_S
    while not store._conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return store._meta("store_id") is not None  # the schema and store_id are committed in one transaction


def _refuse_a_lost_store(config: AuditConfig, error: type[AuditError | IntegrityError]) -> None:
    """A missing, emptied or replaced audit.db whose anchor log names records: the records were lost. Stop, rather
    than start a new, empty chain that hides the loss (a command cannot be audited, exit 4; verification, exit 1)."""
    entries, _ = read_anchor(config.anchor_path) if config.anchor_path.exists() else ([], [])
    if entries:
        raise error(
            f"the audit store is missing, empty or not medseg's, but its anchor log names "
            f"{max(e.seq for e in entries)} record(s): "
            "records were lost",
            path=config.db_path,
            hint="Restore audit.db from a backup; no command runs unaudited meanwhile.",
        )


def _not_a_store(config: AuditConfig, empty: bool) -> IntegrityError:
    """For a reader, an audit.db that is empty or another application's database (no anchor log names records):
    the records it should hold are not there, an integrity failure (exit 1) whose remedy is a backup or the right
    folder, not disk space."""
    what = "empty (never initialised, or emptied)" if empty else "not a medseg audit database (it has other tables)"
    return IntegrityError(f"the audit store is {what}", path=config.db_path,
                          hint="Restore audit.db from a backup, or check MEDSEG_AUDIT_DIR.")  # fmt: skip


def _refuse_a_file_as_folder(config: AuditConfig) -> None:
    """MEDSEG_AUDIT_DIR (or --audit-dir, or the anchor folder) naming a file or a dangling symbolic link (also on the
    way to it): say so in one line (AuditError, exit 4, as for any audit folder that cannot be used), not 'File
    exists' with advice to free disk space."""
    for name, folder in (("audit folder (MEDSEG_AUDIT_DIR)", config.audit_dir),
                         ("anchor folder (MEDSEG_AUDIT_ANCHOR_DIR)", config.anchor_dir)):  # fmt: skip
        dangling = next((p for p in (folder, *folder.parents) if p.is_symlink() and not p.exists()), None)
        if dangling is not None:
            where = "" if dangling == folder else f" on the way: {dangling}"
            raise AuditError(f"the {name} is a dangling symbolic link{where} (to {os.readlink(dangling)}, which does "
                             "not exist)", path=folder, hint="Create the folder it points to, or point the variable "
                             "at an existing folder.")  # fmt: skip
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise AuditError(f"the {name} is a file, not a folder" + ("" if blocker == folder else f": {blocker}"),
                             path=folder, hint="Point it at a folder.")  # fmt: skip


def is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error says the file is not a sound database (corrupt, or not a database at all)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and isinstance(code, int) and code & 0xFF in DAMAGED_CODES


def damaged_store_error(
    config: AuditConfig, exc: BaseException, error: type[AuditError | IntegrityError]
) -> AuditError | IntegrityError:
    """The error for an audit.db that is not a sound SQLite database (overwritten, truncated, damaged): as for a
    deleted store, the anchor log tells how many records were lost; the remedy is a backup, not disk space."""
    reason = str(exc) or type(exc).__name__
    entries, _ = read_anchor(config.anchor_path) if config.anchor_path.exists() else ([], [])
    lost = (f", but its anchor log names {max(e.seq for e in entries)} record(s): records were lost"
            if entries else "")  # fmt: skip
    return error(
        f"the audit store is damaged or not medseg's ({reason}){lost}",
        path=config.db_path,
        hint="Restore audit.db from a backup; no command runs unaudited meanwhile.",
    )


def _audit_error(what: str, path: Path, exc: BaseException) -> AuditError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    hint = ("The command was stopped so that nothing runs unaudited; free disk space or fix the permissions of "
            "MEDSEG_AUDIT_DIR, then rerun")  # fmt: skip
    if is_damage(exc):
        hint = "The command was stopped so that nothing runs unaudited; restore audit.db from a backup"
    elif "locked" in str(exc) or "busy" in str(exc):
        hint = (f"The audit store was busy: another process held its write lock for over {BUSY_TIMEOUT_S:g} s; "
                "rerun when that process has finished")  # fmt: skip
    return AuditError(f"{what}: {reason}", path=path, hint=hint)
