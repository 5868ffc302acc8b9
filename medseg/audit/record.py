"""The audit event (what one command did) and the chained record the store keeps for it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from medseg.audit.canonical import JsonValue, chain_hash

SCHEMA = "medseg.audit/1"
OUTCOMES = ("started", "success", "failure", "qc_rejected", "interrupted")


@dataclass(frozen=True)
class AuditEvent:
    """One event: `kind` 'start' when a command begins, 'end' with outcome, digests and duration when it stops."""

    kind: str
    invocation: str
    command: str
    params: dict[str, JsonValue]
    os_user: str
    operator: str | None
    host: str
    pid: int
    software: dict[str, str]
    started_at: str
    outcome: str = "started"
    exit_code: int | None = None
    outcome_detail: str | None = None
    error_type: str | None = None
    duration_ms: int | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, str] | None = None
    mlflow_run_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("start", "end"):
            raise ValueError(f"unknown audit event kind {self.kind!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown audit outcome {self.outcome!r}")

    def body(self, seq: int, ts: str, prev_hash: str) -> dict[str, JsonValue]:
        """The chained body: every event field plus its place in the chain (everything but its own hash)."""
        return {**asdict(self), "schema": SCHEMA, "seq": seq, "ts": ts, "prev_hash": prev_hash}


@dataclass(frozen=True)
class ChainedRecord:
    """A stored event: the body as written, and the hash that chains it to its predecessor."""

    seq: int
    hash: str
    body: dict[str, Any]

    @property
    def prev_hash(self) -> str:
        """The hash of the record before this one, as recorded in the body."""
        return str(self.body.get("prev_hash", ""))

    def recomputed_hash(self) -> str:
        """The hash the body should have; differs from `hash` when the body was edited."""
        return chain_hash(self.prev_hash, self.body)

    def to_json(self) -> dict[str, Any]:
        """Body plus hash, as shown by `medseg audit show --json` and written into exports."""
        return {**self.body, "hash": self.hash}
