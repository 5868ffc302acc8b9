"""The queue's schema and records: jobs, leases, what receiving an instance did, the backoff policy."""

from __future__ import annotations

from dataclasses import dataclass

from medseg.errors import ProcessingError

SCHEMA_VERSION = 1
JOB_STATES = ("queued", "running", "pending", "sent", "failed", "quarantined", "superseded")
OPEN_STATES = ("queued", "running", "pending", "failed")

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'complete')),
    generation INTEGER NOT NULL DEFAULT 1,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    deadline REAL NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    generation INTEGER NOT NULL,
    input TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'pending', 'sent', 'failed', 'quarantined',
                                         'superseded')),
    attempts INTEGER NOT NULL DEFAULT 0,
    rounds INTEGER NOT NULL DEFAULT 0,
    fence INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    not_before REAL NOT NULL DEFAULT 0,
    reason TEXT,
    idem_key TEXT,
    seg_series_uid TEXT,
    seg_sop_uid TEXT,
    result TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (study_uid, generation)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, not_before);
CREATE TABLE IF NOT EXISTS ledger (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sent_at REAL NOT NULL,
    fence INTEGER NOT NULL,
    PRIMARY KEY (job_id, destination)
);
CREATE TABLE IF NOT EXISTS purges (
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    generation INTEGER NOT NULL,
    instances INTEGER NOT NULL,
    received INTEGER NOT NULL,
    at REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS research (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    state TEXT NOT NULL CHECK (state IN ('published', 'withheld', 'superseded')),
    folder TEXT,
    files INTEGER NOT NULL,
    quarantined INTEGER NOT NULL,
    reason TEXT,
    fence INTEGER NOT NULL,
    at REAL NOT NULL
);
"""


class LeaseLost(ProcessingError):
    """This worker's lease on a job was taken over (or the job changed state): it must not commit anything."""


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    id: int
    study_uid: str
    generation: int
    input: str
    state: str
    attempts: int
    rounds: int
    fence: int
    lease_owner: str | None
    lease_expires: float | None
    not_before: float
    reason: str | None
    idem_key: str | None
    seg_series_uid: str | None
    seg_sop_uid: str | None
    result: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a job: the fence it must present with every write."""

    job: Job
    owner: str
    fence: int
    expires: float


@dataclass(frozen=True)
class Received:
    """What recording one instance did: 'new', 'duplicate' (same SOP UID, same bytes) or 'replaced'."""

    outcome: str
    study_uid: str
    generation: int


@dataclass(frozen=True)
class Backoff:
    """Exponential retry delay with a cap, and how many attempts before a job is marked failed."""

    base_s: float = 5.0
    cap_s: float = 300.0
    max_attempts: int = 5
    failed_retry_after_s: float = 3600.0
    max_rounds: int = 3

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt."""
        return min(self.cap_s, self.base_s * 2 ** max(0, attempts - 1))


@dataclass(frozen=True)
class Recipe:
    """What a `medseg batch` job segments with: the organ set and the model (name, version, weights digest). A study
    done with another recipe is segmented again (its result kept beside the earlier one); `model` None where the
    queue has no record of it (jobs made before it was kept), which matches any model."""

    organs: tuple[str, ...]
    model: tuple[str, str, str] | None = None

    def matches(self, other: Recipe) -> bool:
        """Same organ set (in any order, as the idempotency key sorts it) and, where both are known, same model."""
        same_model = self.model is None or other.model is None or self.model == other.model
        return sorted(self.organs) == sorted(other.organs) and same_model

    def describe(self) -> str:
        """'liver, spleen by abdomen 2.2.0 (weights 1a2b3c4d5e6f)', or the organs alone when the model is unknown."""
        organs = ", ".join(self.organs)
        if self.model is None:
            return organs
        name, version, weights = self.model
        return f"{organs} by {name} {version} (weights {weights[:12]})"
