"""The durable job queue: studies, received instances, jobs with leases and fencing, and the ledger of sends.

SQLite in WAL mode with synchronous=FULL: every state change is committed (and on disk) before it is acted on.
A job is leased for a time; each lease increments the job's fence, and every later write by the lease holder
names that fence, so a worker whose lease expired and was taken over can no longer commit anything.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from medseg.errors import ProcessingError
from medseg.pacs.records import (
    JOB_STATES,
    OPEN_STATES,
    SCHEMA_SQL,
    SCHEMA_VERSION,
    Backoff,
    Job,
    Lease,
    LeaseLost,
    Received,
    Recipe,
)

__all__ = ["JOB_STATES", "OPEN_STATES", "Backoff", "Job", "JobQueue", "Lease", "LeaseLost", "Received", "Recipe"]

EXTRA_SQL = """
CREATE TABLE IF NOT EXISTS seg_models (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instance_content (
    sop_uid TEXT PRIMARY KEY,
    digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stored_audits (
    study_uid TEXT PRIMARY KEY,
    instances INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    refused INTEGER NOT NULL,
    last_at REAL NOT NULL,
    last_status INTEGER NOT NULL,
    last_reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_inputs (
    study_uid TEXT NOT NULL,
    digest TEXT NOT NULL,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    PRIMARY KEY (study_uid, digest)
);
CREATE TABLE IF NOT EXISTS batch_recipes (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    study_uid TEXT NOT NULL,
    digest TEXT NOT NULL,
    organs TEXT NOT NULL
);
"""


QUEUE_GONE_HINT = ("Restore queue.db from a backup, removing queue.db-wal and queue.db-shm beside it first (or move "
                   "the storage aside to start empty), then start the service again; never delete it while the "
                   "service runs.")


class QueueGone(ProcessingError):
    """queue.db deleted or replaced while the queue was open (exit 4): the service stops rather than acknowledge
    studies into a database nobody will read again."""


def _identity(path: Path) -> tuple[int, int]:
    """(device, inode) of a file: which file a path names now."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


class JobQueue:
    """The queue database; safe to use from several threads and processes (one connection per thread)."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._file: tuple[int, int] | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._refuse_foreign()
            self._local.conn = self._open(create=True)
            self._conn().executescript(SCHEMA_SQL + EXTRA_SQL)
            with self._write() as db:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._file = _identity(self.path)
        except (sqlite3.Error, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            hint = "Check that the folder exists and is writable."
            raise ProcessingError(f"cannot open the job queue: {why}", path=self.path, hint=hint) from exc

    def _refuse_foreign(self) -> None:
        """ProcessingError for an existing SQLite file that holds tables but is no medseg queue (no schema_version in
        meta), looked at read-only: the service's tables must not be added to another application's database."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            ours = "meta" in tables and conn.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone()
        if tables and not ours:
            raise ProcessingError("not a medseg job queue: the SQLite file holds other tables and no schema version; "
                                  "left unchanged", path=self.path,
                                  hint="Point --storage at the service's own storage folder.")  # fmt: skip

    def _open(self, create: bool = False) -> sqlite3.Connection:
        """A connection to the queue file; only the first open (in __init__) may create it. Later ones use
        `mode=rw`, so a queue.db deleted under a running service is an error, not a fresh empty queue silently
        created beside the old one (review 19)."""
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode={'rwc' if create else 'rw'}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.OperationalError as exc:
            if create or self.path.exists():
                raise
            raise QueueGone(f"the job queue file is gone: {exc}", path=self.path, hint=QUEUE_GONE_HINT) from exc
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.check_file()
            conn = self._open()
            self._local.conn = conn
        return conn

    def check_file(self) -> None:
        """QueueGone when queue.db is no longer the file this queue opened (deleted, or replaced by another file):
        what is recorded from then on would be lost or mixed with another queue's."""
        if self._file is None:
            return
        try:
            now = _identity(self.path)
        except FileNotFoundError:
            now = None
        if now != self._file:
            what = "was deleted" if now is None else "was replaced by another file"
            raise QueueGone(f"the job queue file {what} while in use", path=self.path, hint=QUEUE_GONE_HINT)

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any error; refused (QueueGone) when the
        file was deleted or replaced since it was opened, so no write goes to a file nobody will read again."""
        db = self._conn()
        self.check_file()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # receiving ----------------------------------------------------------------------------------------------
    def record_instance(
        self, sop_uid: str, study_uid: str, series_uid: str, path: str, sha256: str, size: int,
        quiet_s: float, calling_ae: str = "", now: float | None = None, reopens: bool = True,
        content: str | None = None,
    ) -> Received:  # fmt: skip
        """Record a stored instance and push its study's completion deadline; a study already done is reopened.

        `reopens=False` (an instance that is not image input: a SEG, a report, medseg's own SEG sent back by the PACS)
        is recorded but never reopens, starts or delays a study, so a PACS that echoes results cannot loop.
        `content` (the SCP's `content_digest`, independent of the transfer syntax): the same SOP Instance UID with
        the same content in other bytes is a duplicate too (its row takes the new file's digest and size)."""
        now = time.time() if now is None else now
        with self._write() as db:
            old = db.execute("SELECT sha256, study_uid FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
            study = db.execute("SELECT state, generation FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            if old is not None and (old["sha256"] == sha256 or self._same_content(db, sop_uid, content)):
                if old["sha256"] != sha256:
                    db.execute("UPDATE instances SET path=?, sha256=?, size=? WHERE sop_uid=?",
                               (path, sha256, size, sop_uid))  # fmt: skip
                gen = study["generation"] if study else 1
                return Received("duplicate", study_uid, gen)
            if content is not None:
                db.execute("INSERT OR REPLACE INTO instance_content VALUES (?, ?)", (sop_uid, content))
            if not reopens:
                if study is None:
                    db.execute("INSERT INTO studies VALUES (?, 'complete', 1, ?, ?, ?, 0)", (study_uid, now, now, now))
                else:  # no deadline moved; the time of the last file stored, which retention counts from
                    db.execute("UPDATE studies SET last_at=MAX(last_at, ?) WHERE study_uid=?", (now, study_uid))
                gen = study["generation"] if study else 1
            elif study is None:
                db.execute(
                    "INSERT INTO studies VALUES (?, 'receiving', 1, ?, ?, ?, 0)", (study_uid, now, now, now + quiet_s)
                )
                gen = 1
            else:
                gen = study["generation"]
                has_job = db.execute(
                    "SELECT 1 FROM jobs WHERE study_uid=? AND generation=?", (study_uid, gen)
                ).fetchone()
                if study["state"] == "complete" or has_job:
                    gen += 1
                db.execute(
                    "UPDATE studies SET state='receiving', generation=?, last_at=?, deadline=? WHERE study_uid=?",
                    (gen, now, now + quiet_s, study_uid),
                )
            db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, study_uid, series_uid, path, sha256, size, now, calling_ae),
            )
            db.execute(
                "UPDATE studies SET instances=(SELECT COUNT(*) FROM instances WHERE study_uid=?) WHERE study_uid=?",
                (study_uid, study_uid),
            )
            outcome = "new" if reopens else "not input"
            return Received("replaced" if old is not None else outcome, study_uid, gen)

    @staticmethod
    def _same_content(db: sqlite3.Connection, sop_uid: str, content: str | None) -> bool:
        """Whether the instance recorded under `sop_uid` has this content digest."""
        if content is None:
            return False
        row = db.execute("SELECT digest FROM instance_content WHERE sop_uid=?", (sop_uid,)).fetchone()
        return row is not None and row["digest"] == content

    def complete_due(self, input_of: Callable[[str], str] | None = None, now: float | None = None) -> list[Job]:
        """Studies whose quiet time has passed become complete, each with a new job; earlier open jobs are superseded.

        `input_of` gives the folder a study's job reads (default: the study UID itself).
        """
        now = time.time() if now is None else now
        with self._write() as db:
            due = db.execute(
                "SELECT study_uid, generation FROM studies WHERE state='receiving' AND deadline<=?", (now,)
            ).fetchall()
            made = []
            for row in due:
                uid, gen = row["study_uid"], row["generation"]
                db.execute("UPDATE studies SET state='complete' WHERE study_uid=?", (uid,))
                db.execute(
                    "UPDATE jobs SET state='superseded', reason=?, updated_at=?, lease_owner=NULL "
                    "WHERE study_uid=? AND generation<? AND state IN ('queued', 'pending', 'failed')",
                    (f"superseded by generation {gen} (instances arrived after completion)", now, uid, gen),
                )
                cur = db.execute(
                    "INSERT OR IGNORE INTO jobs (study_uid, generation, input, state, created_at, updated_at) "
                    "VALUES (?, ?, ?, 'queued', ?, ?)",
                    (uid, gen, input_of(uid) if input_of else uid, now, now),
                )
                if cur.rowcount:
                    made.append(self._job(db, int(cur.lastrowid or 0)))
            return made

    _NOT_INPUT = (
        "SELECT s.study_uid, s.generation, s.instances, s.first_at FROM studies s WHERE s.state='complete' "
        "AND s.instances>0 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid=s.study_uid)"
    )

    def not_input_studies(self) -> list[dict[str, object]]:
        """Studies stored that hold no image input (only an RT structure set, a report, another system's SEG): no job
        is made for them, but their files are patient data, shown by `pacs status` and deleted by retention."""
        return [dict(r) for r in self._conn().execute(self._NOT_INPUT + " ORDER BY s.first_at")]

    def unaudited_not_input(self, quiet_s: float, now: float | None = None) -> list[tuple[str, int, int]]:
        """(study UID, generation, instances) of the not-input studies quiet for `quiet_s` whose instance count has
        not been audited yet (once per count: more objects arriving later are audited again)."""
        now = time.time() if now is None else now
        sql = (self._NOT_INPUT + " AND s.last_at<=? AND NOT EXISTS (SELECT 1 FROM stored_audits a "
               "WHERE a.study_uid=s.study_uid AND a.instances=s.instances) ORDER BY s.first_at")  # fmt: skip
        return [(str(r[0]), int(r[1]), int(r[2])) for r in self._conn().execute(sql, (now - quiet_s,))]

    def mark_audited(self, study_uid: str, instances: int, now: float | None = None) -> None:
        """The not-input study's `pacs.receive` audit record (with this instance count) is written."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO stored_audits VALUES (?, ?, ?)", (study_uid, instances, now))

    def add_job(self, study_key: str, input_path: str, now: float | None = None) -> Job:
        """A job for an already complete study read in place (`medseg batch`); the existing one when added before."""
        now = time.time() if now is None else now
        with self._write() as db:
            sql = "INSERT OR IGNORE INTO studies VALUES (?, 'complete', 1, ?, ?, ?, 0)"
            db.execute(sql, (study_key, now, now, now))
            db.execute(
                "INSERT OR IGNORE INTO jobs (study_uid, generation, input, state, created_at, updated_at) "
                "VALUES (?, 1, ?, 'queued', ?, ?)",
                (study_key, input_path, now, now),
            )
            row = db.execute("SELECT id FROM jobs WHERE study_uid=? AND generation=1", (study_key,)).fetchone()
            return self._job(db, row["id"])

    def add_study(
        self, study_uid: str, digest: str, input_path: str, now: float | None = None, recipe: Recipe | None = None
    ) -> tuple[Job, str]:
        """`medseg batch`: the job of a study read in place, found by its UID and content digest, and what was done:
        'new' (a new generation of the study; its open jobs of other content in the same folder are superseded), 'open'
        (still to run, due now), 'retried' (failed or superseded before: queued again with fresh attempts),
        'quarantined' (same content as when it was quarantined), 'done' (sent, by a job made with this `recipe`:
        organ set and model) or 'redone' (sent before, but only with another organ set or model: a new job of the
        next generation, whose result is kept beside the earlier one). The input path is updated on a job not yet
        done, so a moved input folder is read where it is now; the recipe is recorded on the job that will run."""
        now = time.time() if now is None else now
        with self._write() as db:
            known = self._batch_jobs(db, study_uid, digest)
            sent = [j for j in known if self._job(db, j).state == "sent"]
            done = next((j for j in sent if recipe is None or self._recipe(db, j, recipe).matches(recipe)), None)
            waiting = [j for j in known if j not in sent]
            if done is not None:
                self._supersede_waiting(db, waiting, done, now)
                return self._job(db, done), "done"
            if waiting:
                how = self._reopen(db, waiting[0], input_path, now)
                self._record_recipe(db, waiting[0], study_uid, digest, recipe, how != "quarantined")
                return self._job(db, waiting[0]), how
            job_id = self._new_batch_job(db, study_uid, input_path, now)
            self._record_recipe(db, job_id, study_uid, digest, recipe, True)
            db.execute("INSERT OR REPLACE INTO batch_inputs VALUES (?, ?, ?)", (study_uid, digest, job_id))
            if sent:
                return self._job(db, job_id), "redone"
            db.execute(
                "UPDATE jobs SET state='superseded', reason=?, updated_at=?, lease_owner=NULL "
                "WHERE study_uid=? AND input=? AND id<>? AND state IN ('queued', 'pending', 'failed')",
                (f"superseded by job {job_id}: the study's files changed", now, study_uid, input_path, job_id),
            )
            return self._job(db, job_id), "new"

    @staticmethod
    def _supersede_waiting(db: sqlite3.Connection, waiting: list[int], done: int, now: float) -> None:
        """Open jobs of the same content (another recipe's, interrupted) are superseded once a rerun finds the study
        done with its own recipe: the run must not make them with its organs and model."""
        reason = f"superseded: the study was done by job {done} with the organs and model of a later run"
        for job_id in waiting:
            db.execute(
                "UPDATE jobs SET state='superseded', reason=?, updated_at=?, lease_owner=NULL "
                "WHERE id=? AND state IN ('queued', 'pending', 'failed')",
                (reason, now, job_id),
            )

    @staticmethod
    def _batch_jobs(db: sqlite3.Connection, study_uid: str, digest: str) -> list[int]:
        """The batch jobs of this study and content, newest first."""
        rows = db.execute(
            "SELECT job_id FROM batch_inputs WHERE study_uid=? AND digest=? UNION "
            "SELECT job_id FROM batch_recipes WHERE study_uid=? AND digest=? ORDER BY job_id DESC",
            (study_uid, digest, study_uid, digest),
        )
        return [int(r[0]) for r in rows]

    @staticmethod
    def _new_batch_job(db: sqlite3.Connection, study_uid: str, input_path: str, now: float) -> int:
        """A queued job of the study's next generation (the study recorded complete if new)."""
        sql = "INSERT OR IGNORE INTO studies VALUES (?, 'complete', 1, ?, ?, ?, 0)"
        db.execute(sql, (study_uid, now, now, now))
        gen = db.execute("SELECT COALESCE(MAX(generation), 0) + 1 FROM jobs WHERE study_uid=?", (study_uid,))
        cur = db.execute(
            "INSERT INTO jobs (study_uid, generation, input, state, created_at, updated_at) "
            "VALUES (?, ?, ?, 'queued', ?, ?)",
            (study_uid, int(gen.fetchone()[0]), input_path, now, now),
        )
        return int(cur.lastrowid or 0)

    @staticmethod
    def _record_recipe(
        db: sqlite3.Connection, job_id: int, study_uid: str, digest: str, recipe: Recipe | None, replace: bool
    ) -> None:
        """Keep the organ set a batch job runs with (its model is kept when its SEG is made, in seg_models); an
        existing record is replaced only where the job will run again (`replace`)."""
        if recipe is None:
            return
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        row = (job_id, study_uid, digest, ",".join(recipe.organs))
        db.execute(f"{verb} INTO batch_recipes VALUES (?, ?, ?, ?)", row)

    @staticmethod
    def _recipe(db: sqlite3.Connection, job_id: int, asked: Recipe) -> Recipe:
        """What the job's result was made with: its recorded organ set and the model of its SEG. A job made before
        organ sets were kept is taken as made for the organs `asked` (it cannot be told), a model not recorded as
        any model."""
        row = db.execute("SELECT organs FROM batch_recipes WHERE job_id=?", (job_id,)).fetchone()
        organs = tuple(str(row["organs"]).split(",")) if row is not None else asked.organs
        made = db.execute("SELECT name, version, weights_sha256 FROM seg_models WHERE job_id=?", (job_id,)).fetchone()
        return Recipe(organs, (str(made[0]), str(made[1]), str(made[2])) if made else None)

    def recipe(self, job_id: int) -> Recipe | None:
        """The organ set and model a batch job's result was made with; None for a job without a recorded organ set."""
        db = self._conn()
        if db.execute("SELECT 1 FROM batch_recipes WHERE job_id=?", (job_id,)).fetchone() is None:
            return None
        return self._recipe(db, job_id, Recipe(()))

    @staticmethod
    def _reopen(db: sqlite3.Connection, job_id: int, input_path: str, now: float) -> str:
        """A batch study seen again: failed or superseded jobs queued with fresh attempts, pending ones due now."""
        state = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()["state"]
        if state in ("sent", "quarantined"):
            return "done" if state == "sent" else "quarantined"
        if state in ("failed", "superseded"):
            db.execute(
                "UPDATE jobs SET state='queued', attempts=0, rounds=0, not_before=0, reason=NULL, input=?, "
                "updated_at=? WHERE id=?",
                (input_path, now, job_id),
            )
            return "retried"
        db.execute("UPDATE jobs SET input=?, not_before=0 WHERE id=?", (input_path, job_id))
        return "open"

    def open_jobs(self) -> int:
        """Jobs not yet in a final state (queued, running, pending)."""
        row = self._conn().execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running', 'pending')")
        return int(row.fetchone()[0])

    def next_deadline(self) -> float | None:
        """The earliest completion deadline of a study still receiving (persisted, so it survives restarts)."""
        row = self._conn().execute("SELECT MIN(deadline) FROM studies WHERE state='receiving'").fetchone()
        return row[0]

    # leasing ------------------------------------------------------------------------------------------------
    def lease(self, owner: str, duration_s: float, now: float | None = None, job_id: int | None = None,
              backoff: Backoff | None = None) -> Lease | None:  # fmt: skip
        """Claim the oldest runnable job (queued, pending past its backoff, or running with an expired lease).

        With `backoff`, a running job whose lease expired after its last allowed attempt (its holder died or hung
        every time) is made 'failed' with the reason instead of being leased again: never an endless loop."""
        now = time.time() if now is None else now
        with self._write() as db:
            if backoff is not None:
                self._fail_expired(db, backoff, now)
            sql = (
                "SELECT id FROM jobs WHERE ((state IN ('queued', 'pending') AND not_before<=?) "
                "OR (state='running' AND lease_expires<?))"
            )
            args: tuple[object, ...] = (now, now)
            if job_id is not None:
                sql += " AND id=?"
                args += (job_id,)
            row = db.execute(sql + " ORDER BY not_before, id LIMIT 1", args).fetchone()
            if row is None:
                return None
            expires = now + duration_s
            db.execute(
                "UPDATE jobs SET state='running', fence=fence+1, attempts=attempts+1, lease_owner=?, "
                "lease_expires=?, updated_at=? WHERE id=?",
                (owner, expires, now, row["id"]),
            )
            job = self._job(db, row["id"])
            return Lease(job, owner, job.fence, expires)

    @staticmethod
    def _fail_expired(db: sqlite3.Connection, backoff: Backoff, now: float) -> None:
        """Running jobs whose lease expired with `max_attempts` used up end 'failed' (cool-down as `fail` sets)."""
        db.execute(
            "UPDATE jobs SET state='failed', reason=?, lease_owner=NULL, lease_expires=NULL, not_before=?, "
            "updated_at=? WHERE state='running' AND lease_expires<? AND attempts>=?",
            (f"the last of {backoff.max_attempts} attempt(s) never finished: its lease expired (the worker died or "
             "hung; see the service log)", now + backoff.failed_retry_after_s, now, now, backoff.max_attempts),
        )  # fmt: skip

    def _check(self, db: sqlite3.Connection, lease: Lease) -> None:
        row = db.execute("SELECT state, fence FROM jobs WHERE id=?", (lease.job.id,)).fetchone()
        if row is None or row["state"] != "running" or row["fence"] != lease.fence:
            raise LeaseLost(
                f"job {lease.job.id}: lease {lease.fence} of {lease.owner} is no longer valid",
                hint="Another worker took the job over; this result is discarded.",
            )

    def renew(self, lease: Lease, duration_s: float, now: float | None = None) -> Lease:
        """Extend a lease still held (LeaseLost otherwise)."""
        now = time.time() if now is None else now
        with self._write() as db:
            self._check(db, lease)
            db.execute("UPDATE jobs SET lease_expires=? WHERE id=?", (now + duration_s, lease.job.id))
        return Lease(lease.job, lease.owner, lease.fence, now + duration_s)

    def set_identity(self, lease: Lease, idem_key: str, series_uid: str, sop_uid: str, result: str,
                     model: tuple[str, str, str] | None = None) -> None:  # fmt: skip
        """Record the job's idempotency key, the SEG's derived UIDs, where the result file is and (name, version,
        weights digest) of the model that made it."""
        with self._write() as db:
            self._check(db, lease)
            db.execute(
                "UPDATE jobs SET idem_key=?, seg_series_uid=?, seg_sop_uid=?, result=?, updated_at=? WHERE id=?",
                (idem_key, series_uid, sop_uid, result, time.time(), lease.job.id),
            )
            if model is not None:
                db.execute("INSERT OR REPLACE INTO seg_models VALUES (?, ?, ?, ?)", (lease.job.id, *model))

    def seg_model(self, job_id: int) -> tuple[str, str, str] | None:
        """(name, version, weights digest) of the model that made the job's SEG, when recorded."""
        row = self._conn().execute("SELECT name, version, weights_sha256 FROM seg_models WHERE job_id=?", (job_id,))
        found = row.fetchone()
        return (str(found[0]), str(found[1]), str(found[2])) if found else None

    def sent_to(self, job_id: int, destination: str) -> bool:
        """Whether the ledger already holds a send of this job to this destination."""
        row = self._conn().execute(
            "SELECT 1 FROM ledger WHERE job_id=? AND destination=?", (job_id, destination)
        ).fetchone()
        return row is not None

    def record_sent(self, lease: Lease, destination: str, idem_key: str, sop_uid: str, finish: bool = True,
                    note: str | None = None) -> None:  # fmt: skip
        """Ledger row and (with `finish`) state 'sent' in one transaction, fenced; without `finish` the job keeps
        running for what follows the send (the research copy) and ends with `finish_from_ledger`. `note` (a warning
        the destination gave with its success) is kept as the sent job's reason."""
        now = time.time()
        with self._write() as db:
            self._check(db, lease)
            db.execute(
                "INSERT OR IGNORE INTO ledger VALUES (?, ?, ?, ?, ?, ?)",
                (lease.job.id, destination, idem_key, sop_uid, now, lease.fence),
            )
            if finish:
                self._end(db, lease, "sent", note, now)

    def record_research(self, lease: Lease, state: str, folder: str | None, files: int, quarantined: int,
                        reason: str | None) -> None:  # fmt: skip
        """How the job's research copy ended (published or withheld), fenced; replaces an earlier row of the job."""
        with self._write() as db:
            self._check(db, lease)
            db.execute(
                "INSERT OR REPLACE INTO research VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (lease.job.id, state, folder, files, quarantined, reason, lease.fence, time.time()),
            )

    def research(self, job_id: int | None = None) -> list[dict[str, object]]:
        """Research copies made (of one job)."""
        sql, args = "SELECT * FROM research", ()
        if job_id is not None:
            sql, args = sql + " WHERE job_id=?", (job_id,)
        return [dict(r) for r in self._conn().execute(sql + " ORDER BY job_id", args)]

    def finish_from_ledger(self, lease: Lease) -> None:
        """Mark 'sent' a job whose send was already in the ledger (the process died before updating the job)."""
        with self._write() as db:
            self._check(db, lease)
            self._end(db, lease, "sent", None, time.time())

    def supersede_if_stale(self, lease: Lease) -> int | None:
        """A running job whose study received new instances while it ran (a newer generation exists): marked
        superseded, fenced, and the newer generation returned, so its result is not sent (the newer job segments the
        whole study); None while the job is still the study's latest."""
        with self._write() as db:
            self._check(db, lease)
            row = db.execute("SELECT generation FROM studies WHERE study_uid=?", (lease.job.study_uid,)).fetchone()
            if row is None or int(row["generation"]) <= lease.job.generation:
                return None
            newer = int(row["generation"])
            reason = f"superseded by generation {newer} (instances arrived while it ran); not sent"
            self._end(db, lease, "superseded", reason, time.time())
            return newer

    def quarantine(self, lease: Lease, reason: str) -> None:
        """A bad study: never retried automatically, never blocks the queue."""
        with self._write() as db:
            self._check(db, lease)
            self._end(db, lease, "quarantined", reason, time.time())

    def fail(self, lease: Lease, reason: str, backoff: Backoff, now: float | None = None) -> str:
        """A failed attempt: 'pending' with an exponential delay, or 'failed' once attempts are used up."""
        now = time.time() if now is None else now
        with self._write() as db:
            self._check(db, lease)
            attempts = db.execute("SELECT attempts FROM jobs WHERE id=?", (lease.job.id,)).fetchone()[0]
            if attempts >= backoff.max_attempts:
                state, not_before = "failed", now + backoff.failed_retry_after_s
            else:
                state, not_before = "pending", now + backoff.delay(attempts)
            self._end(db, lease, state, reason, now, not_before)
            return state

    def hand_back(self, lease: Lease) -> None:
        """Give a lease back unfinished (graceful stop): the job is queued again and this attempt not counted."""
        with self._write() as db:
            self._check(db, lease)
            db.execute(
                "UPDATE jobs SET state='queued', attempts=MAX(0, attempts-1), lease_owner=NULL, lease_expires=NULL, "
                "updated_at=? WHERE id=?",
                (time.time(), lease.job.id),
            )

    def release(self, job_id: int, fence: int, count_attempt: bool = False, backoff: Backoff | None = None) -> str:
        """Give back a lease by job and fence: a graceful stop (attempt not counted) or a holder known dead. With
        `backoff`, a dead holder's job that used its last allowed attempt ends 'failed' instead (a study that kills
        every worker that takes it must not loop through restarts). The job's state after, '' if nothing changed."""
        attempts = "attempts" if count_attempt else "MAX(0, attempts-1)"
        now = time.time()
        with self._write() as db:
            if count_attempt and backoff is not None:
                cur = db.execute(
                    "UPDATE jobs SET state='failed', reason=?, lease_owner=NULL, lease_expires=NULL, not_before=?, "
                    "updated_at=? WHERE id=? AND fence=? AND state='running' AND attempts>=?",
                    (f"the last of {backoff.max_attempts} attempt(s) never finished: its holder on this host died "
                     "(killed or crashed; see the service log)", now + backoff.failed_retry_after_s, now, job_id, fence,
                     backoff.max_attempts),
                )  # fmt: skip
                if cur.rowcount == 1:
                    return "failed"
            cur = db.execute(
                f"UPDATE jobs SET state='queued', attempts={attempts}, lease_owner=NULL, lease_expires=NULL, "
                "updated_at=? WHERE id=? AND fence=? AND state='running'",
                (now, job_id, fence),
            )
            return "queued" if cur.rowcount == 1 else ""

    @staticmethod
    def _end(
        db: sqlite3.Connection, lease: Lease, state: str, reason: str | None, now: float, not_before: float = 0.0
    ) -> None:
        db.execute(
            "UPDATE jobs SET state=?, reason=?, lease_owner=NULL, lease_expires=NULL, not_before=?, updated_at=? "
            "WHERE id=?",
            (state, reason, not_before, now, lease.job.id),
        )

    def requeue_failed(self, backoff: Backoff, now: float | None = None) -> int:
        """Failed jobs whose cool-down passed get another round of attempts, at most `max_rounds` (never a loop)."""
        now = time.time() if now is None else now
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET state='queued', attempts=0, rounds=rounds+1, updated_at=? "
                "WHERE state='failed' AND not_before<=? AND rounds<?",
                (now, now, backoff.max_rounds),
            )
            return cur.rowcount

    def retry(
        self, job_id: int | None = None, failed: bool = False, orphans: dict[int, int] | None = None
    ) -> list[int]:
        """Operator retry: the job (failed, quarantined, pending, or running but orphaned: in `orphans`, {job id:
        fence} of running jobs whose holder is known dead, still at that fence) or every failed job, queued now."""
        if job_id is None and not failed:
            raise ProcessingError("nothing to retry", hint="Name a job id or pass --failed.")
        now = time.time()
        with self._write() as db:
            if job_id is not None:
                fence = (orphans or {}).get(job_id, -1)
                rows = db.execute(
                    "SELECT id FROM jobs WHERE id=? AND (state IN ('failed', 'quarantined', 'pending') "
                    "OR (state='running' AND fence=?))", (job_id, fence),
                ).fetchall()  # fmt: skip
            else:
                rows = db.execute("SELECT id FROM jobs WHERE state='failed'").fetchall()
            ids = [r["id"] for r in rows]
            for i in ids:
                db.execute(
                    "UPDATE jobs SET state='queued', attempts=0, rounds=0, not_before=0, lease_owner=NULL, "
                    "lease_expires=NULL, updated_at=? WHERE id=?",
                    (now, i),
                )
            return ids

    # retention ----------------------------------------------------------------------------------------------
    _SETTLED = (
        "SELECT s.study_uid, s.generation, s.instances FROM studies s WHERE s.state='complete' AND s.last_at<? "
        "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid=s.study_uid "
        "AND (j.state IN ('queued', 'running', 'pending', 'failed') OR j.updated_at>=?)) "
        "AND (s.instances>0 OR EXISTS (SELECT 1 FROM purges p WHERE p.study_uid=s.study_uid AND p.done=0))"
    )

    def settled_before(self, cutoff: float) -> list[dict[str, object]]:
        """Complete studies with no instance since `cutoff` and no job open (queued, running, pending, failed) or
        ended after it, that still have instances or a purge not finished: the ones whose files retention may delete
        (a study already purged is not looked at again by every later pass)."""
        return [dict(r) for r in self._conn().execute(self._SETTLED, (cutoff, cutoff))]

    def forget_instances(self, study_uid: str, cutoff: float, now: float | None = None) -> int | None:
        """In one transaction: if the study is still settled before `cutoff`, drop its instance rows (a re-send is
        then stored and segmented as new, not taken for a duplicate of a deleted file) and log the purge; the number
        of rows dropped, or None when the study changed meanwhile."""
        now = time.time() if now is None else now
        with self._write() as db:
            row = db.execute(self._SETTLED + " AND s.study_uid=?", (cutoff, cutoff, study_uid)).fetchone()
            if row is None:
                return None
            received = self._received(db, study_uid)
            db.execute(
                "DELETE FROM instance_content WHERE sop_uid IN (SELECT sop_uid FROM instances WHERE study_uid=?)",
                (study_uid,),
            )
            db.execute("DELETE FROM stored_audits WHERE study_uid=?", (study_uid,))  # a re-send is audited anew
            n = db.execute("DELETE FROM instances WHERE study_uid=?", (study_uid,)).rowcount
            db.execute("UPDATE studies SET instances=0 WHERE study_uid=?", (study_uid,))
            unfinished = db.execute("SELECT 1 FROM purges WHERE study_uid=? AND done=0", (study_uid,)).fetchone()
            if n or unfinished is None:  # a pass that died after forgetting keeps its row (and its count)
                db.execute(
                    "INSERT INTO purges (study_uid, generation, instances, received, at) VALUES (?, ?, ?, ?, ?)",
                    (study_uid, row["generation"], n, received, now),
                )
            return int(n)

    def finish_purge(self, study_uid: str) -> None:
        """The study's files are gone: its purge is done and later passes skip the study."""
        with self._write() as db:
            db.execute("UPDATE purges SET done=1 WHERE study_uid=? AND done=0", (study_uid,))

    @staticmethod
    def _received(db: sqlite3.Connection, study_uid: str) -> int:
        """Instances recorded for the study, not counting the echoes of the SEGs medseg itself made for it."""
        return int(db.execute(
            "SELECT COUNT(*) FROM instances WHERE study_uid=? AND sop_uid NOT IN "
            "(SELECT seg_sop_uid FROM jobs WHERE study_uid=? AND seg_sop_uid IS NOT NULL)", (study_uid, study_uid),
        ).fetchone()[0])  # fmt: skip

    def short_after_purge(self, study_uid: str, generation: int) -> tuple[int, int] | None:
        """(instances back, instances before) when retention deleted this study's files before `generation` and
        fewer instances came back than it held then: a partial re-send, whose SEG would replace the whole study's
        (same UIDs) in the PACS. None otherwise."""
        db = self._conn()
        row = db.execute(
            "SELECT MAX(received) FROM purges WHERE study_uid=? AND generation<?", (study_uid, generation)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        back = self._received(db, study_uid)
        return (back, int(row[0])) if back < int(row[0]) else None

    def purges(self) -> list[dict[str, object]]:
        """Every purge done by retention."""
        return [dict(r) for r in self._conn().execute("SELECT * FROM purges ORDER BY at")]

    # reading ------------------------------------------------------------------------------------------------
    @staticmethod
    def _job(db: sqlite3.Connection, job_id: int) -> Job:
        return Job(**dict(db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()))

    def job(self, job_id: int) -> Job | None:
        """One job, or None."""
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job(**dict(row)) if row else None

    def jobs(self, state: str | None = None, study_uid: str | None = None) -> list[Job]:
        """Every job (or those in `state`, of `study_uid`), oldest first."""
        where = [(c, v) for c, v in (("state", state), ("study_uid", study_uid)) if v is not None]
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(f"{c}=?" for c, _ in where) if where else "")
        return [Job(**dict(r)) for r in self._conn().execute(sql + " ORDER BY id", tuple(v for _, v in where))]

    def ledger(self) -> list[dict[str, object]]:
        """Every recorded send."""
        return [dict(r) for r in self._conn().execute("SELECT * FROM ledger ORDER BY job_id")]

    def studies(self) -> list[dict[str, object]]:
        """Every study with its state, generation, instance count and deadline."""
        return [dict(r) for r in self._conn().execute("SELECT * FROM studies ORDER BY first_at")]

    def count_refusal(self, status: int, reason: str, now: float | None = None) -> None:
        """Count one refused C-STORE (kept with the last one's status, time and short reason) for `pacs status`."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute(
                "INSERT INTO refusals VALUES (1, 1, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET refused=refused+1, "
                "last_at=excluded.last_at, last_status=excluded.last_status, last_reason=excluded.last_reason",
                (now, status, reason),
            )

    def refusals(self) -> dict[str, object]:
        """{'refused': count, 'last_at', 'last_status', 'last_reason'} of the C-STOREs refused so far."""
        row = self._conn().execute("SELECT * FROM refusals WHERE id=1").fetchone()
        if row is None:
            return {"refused": 0, "last_at": None, "last_status": None, "last_reason": None}
        return {k: row[k] for k in ("refused", "last_at", "last_status", "last_reason")}

    def instances(self, study_uid: str | None = None) -> list[dict[str, object]]:
        """Recorded instances (of one study)."""
        sql, args = "SELECT * FROM instances", ()
        if study_uid is not None:
            sql, args = sql + " WHERE study_uid=?", (study_uid,)
        return [dict(r) for r in self._conn().execute(sql + " ORDER BY received_at", args)]
