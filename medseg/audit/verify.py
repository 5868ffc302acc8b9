"""Verify the whole chain and name the first record that was edited, deleted, reordered or inserted.

Three independent witnesses are compared: the hash links between records, the `chain_head` table (same database,
same transaction) and the anchor log (outside the database). A problem names the first affected sequence number.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from medseg.audit.anchor import read_anchor
from medseg.audit.canonical import GENESIS_HASH, canonical_json, chain_hash
from medseg.audit.store import AuditStore, Head, damaged_store_error, is_damage
from medseg.errors import IntegrityError

COLUMNS = ("ts", "kind", "invocation", "command", "os_user", "operator", "outcome", "prev_hash")
KINDS = ("edited", "deleted", "reordered", "inserted", "truncated", "anchor")  # Problem.kind values


@dataclass(frozen=True)
class Problem:
    """One integrity failure: its kind, the first affected sequence number, and an explanation."""

    kind: str
    seq: int | None
    message: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}")


@dataclass
class VerifyReport:
    """The outcome of a verification; `ok` only when no problem was found."""

    records: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the chain, the head table and the anchor agree."""
        return not self.problems

    @property
    def first(self) -> Problem | None:
        """The problem at the lowest sequence number (the first record that cannot be trusted)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq is None, p.seq or 0))

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form for `medseg audit verify --json`."""
        first = self.first
        return {
            "ok": self.ok,
            "records": self.records,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "first_problem": None if first is None else first.__dict__,
            "problems": [p.__dict__ for p in self.problems],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class _Row:
    seq: int
    hash: str
    body: dict[str, Any] | None
    columns: dict[str, Any]


def _parse_canonical(text: object) -> dict[str, Any] | None:
    """The stored body, only when its text is exactly the canonical JSON of what it parses to (None otherwise).

    Anything else is an edit the hash cannot see: a duplicate key reads as its last value in Python but as its
    first in SQLite's JSON functions (`audit show --path` would miss the record), and whitespace, key order or
    escapes can be changed without changing the parsed value."""
    if not isinstance(text, str):
        return None
    try:
        parsed = json.loads(text, parse_constant=_refuse_constant)
        if not isinstance(parsed, dict) or canonical_json(parsed) != text:
            return None
    except (ValueError, RecursionError):
        return None
    return parsed


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _rows(store: AuditStore) -> list[_Row]:
    rows = []
    for seq, ts, kind, invocation, command, user, operator, outcome, body, prev, digest in store.rows():
        parsed = _parse_canonical(body)
        columns = dict(zip(COLUMNS, (ts, kind, invocation, command, user, operator, outcome, prev), strict=True))
        rows.append(_Row(int(seq), str(digest), parsed, columns))
    return rows


def _self_consistent(row: _Row) -> bool:
    """The body hashes to the stored hash and the indexed columns repeat the body."""
    if row.body is None or not isinstance(row.body.get("prev_hash"), str):
        return False
    try:
        if chain_hash(row.body["prev_hash"], row.body) != row.hash:
            return False
    except ValueError:
        return False
    return all(row.body.get(name) == value for name, value in row.columns.items())


def verify_chain(rows: list[_Row]) -> Problem | None:
    """Walk the records in order; return the first break in the chain."""
    seq_of = {GENESIS_HASH: 0} | {row.hash: row.seq for row in rows}
    previous = 0
    for i, row in enumerate(rows):
        expected = previous + 1
        if not _self_consistent(row):
            return Problem("edited", row.seq, f"record {row.seq} does not match its hash: edited after it was written")
        assert row.body is not None
        body_seq = row.body.get("seq")
        pred = seq_of.get(row.body["prev_hash"])
        if pred == previous and body_seq == row.seq == expected:
            previous = row.seq
            continue
        if pred is not None and pred > previous:
            return Problem("reordered", row.seq, f"record {row.seq} is out of order: its predecessor is record {pred}")
        if pred is not None and pred < previous:
            return Problem(
                "inserted", pred + 1, f"record(s) {pred + 1}..{previous} were inserted before record {row.seq}"
            )
        if pred is not None:
            return Problem("reordered", row.seq, f"record {row.seq} carries sequence number {body_seq}: renumbered")
        if body_seq != row.seq or row.seq != expected:
            return Problem("deleted", expected, f"record {expected} is missing: deleted (next is record {row.seq})")
        return _broken_link(rows, i, seq_of)
    return None


def _broken_link(rows: list[_Row], i: int, seq_of: dict[str, int]) -> Problem:
    """The link of rows[i] points at no stored record although numbering is intact: a rewrite or an insertion."""
    row = rows[i]
    nxt = rows[i + 1] if i + 1 < len(rows) else None
    next_pred = None if nxt is None or nxt.body is None else seq_of.get(str(nxt.body.get("prev_hash")))
    if nxt is not None and next_pred == row.seq and i > 0:
        before = rows[i - 1].seq
        return Problem(
            "edited", before, f"record {before} was rewritten (its hash changed; record {row.seq} no longer links)"
        )
    if nxt is not None and i > 0 and next_pred == rows[i - 1].seq:
        return Problem("inserted", row.seq, f"record {row.seq} was inserted: it links to no stored record")
    if nxt is None:
        return Problem("inserted", row.seq, f"record {row.seq} was appended with a forged link")
    return Problem("edited", row.seq, f"record {row.seq} was rewritten: it links to no stored record")


def _check_head(head: Head, rows: list[_Row]) -> Problem | None:
    last_seq, last_hash = (rows[-1].seq, rows[-1].hash) if rows else (0, GENESIS_HASH)
    if head.seq > last_seq:
        return Problem("truncated", last_seq + 1, f"the head table names record {head.seq}; the log ends at {last_seq}")
    if head.seq < last_seq:
        return Problem("inserted", head.seq + 1, f"record(s) {head.seq + 1}..{last_seq} lie beyond the chain head")
    if head.hash != last_hash:
        return Problem("edited", head.seq, f"record {head.seq} differs from the hash kept in the head table")
    return None


def _check_anchor(store: AuditStore, rows: list[_Row], report: VerifyReport) -> list[Problem]:
    path = store.config.anchor_path
    by_seq = {row.seq: row.hash for row in rows}
    last_seq = rows[-1].seq if rows else 0
    entries, bad_lines = read_anchor(path)
    if bad_lines:
        report.notes.append(f"anchor log: {len(bad_lines)} unreadable line(s) (e.g. torn by a crash) ignored")
    if rows and not path.exists():
        return [Problem("anchor", None, f"the anchor log {path} is missing")]
    problems: list[Problem] = []
    anchored = 0
    committed = {(e.seq, e.hash) for e in entries if e.state == "C"}
    for entry in entries:
        stored = by_seq.get(entry.seq)
        if stored is None and entry.seq > last_seq and store.hash_at(entry.seq) == entry.hash:
            continue  # appended by a concurrent writer after the snapshot was taken
        if stored == entry.hash:
            anchored = max(anchored, entry.seq)
        elif entry.state == "P" and (entry.seq, entry.hash) not in committed:
            if entry.seq > last_seq + 1 and store.hash_at(entry.seq - 1) is None:
                problems.append(Problem("truncated", last_seq + 1, f"the anchor's prepared write of record "
                                        f"{entry.seq} shows record {entry.seq - 1} existed; log ends at {last_seq}"))
                continue  # a writer prepares record n only after n - 1 is committed: a crash cannot explain this
            report.notes.append(f"anchor: write of record {entry.seq} was never committed (crash or disk full)")
        elif stored is None and entry.seq > last_seq:
            problems.append(
                Problem("truncated", last_seq + 1, f"the anchor names record {entry.seq}; log ends at {last_seq}")
            )
        elif stored is None:
            problems.append(Problem("deleted", entry.seq, f"anchored record {entry.seq} is missing"))
        else:
            problems.append(Problem("edited", entry.seq, f"record {entry.seq} differs from its anchored hash"))
    if last_seq > anchored:
        problems.append(Problem("inserted", anchored + 1, f"record(s) {anchored + 1}..{last_seq} were never anchored"))
    first_of_kind: dict[str, Problem] = {}
    for problem in sorted(problems, key=lambda p: p.seq or 0):
        first_of_kind.setdefault(problem.kind, problem)
    return list(first_of_kind.values())


def verify_store(store: AuditStore) -> VerifyReport:
    """Check the chain links, the head table and the anchor log; the report names the first bad record.

    Records and head are read in one snapshot and the anchor afterwards, so concurrent writers cause no false alarm.
    """
    try:
        with store.snapshot():
            rows = _rows(store)
            head = store.head()
            head_problem = _check_head(head, rows)
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):  # a page damaged inside an otherwise readable file: no record of it can be trusted
            raise damaged_store_error(store.config, exc, IntegrityError) from exc
        raise
    report = VerifyReport(records=len(rows), head_seq=head.seq, head_hash=head.hash)
    for problem in (verify_chain(rows), head_problem):
        if problem is not None:
            report.problems.append(problem)
    report.problems.extend(_check_anchor(store, rows, report))
    report.problems = list(dict.fromkeys(report.problems))
    ended = {r.body.get("invocation") for r in rows if r.body and r.body.get("kind") == "end"}
    open_runs = [
        r.seq for r in rows if r.body and r.body.get("kind") == "start" and r.body.get("invocation") not in ended
    ]
    if open_runs:
        report.notes.append(f"{len(open_runs)} command(s) started without an end event (running or crashed)")
    return report
