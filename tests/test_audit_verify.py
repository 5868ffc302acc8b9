"""Tamper detection: each kind of edit to the raw database is found and the first bad record is named."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from medseg.audit.canonical import canonical_json, chain_hash
from medseg.audit.config import AuditConfig, load_config
from medseg.audit.record import AuditEvent
from medseg.audit.session import audit_session
from medseg.audit.store import AuditStore
from medseg.audit.verify import VerifyReport, verify_store

N = 10  # records in the chain under test (5 audited commands)
TRIGGERS = ("events_no_update", "events_no_delete", "events_link", "head_forward", "head_no_delete")


@pytest.fixture
def chain(tmp_path: Path) -> AuditConfig:
    """A store with N records written through the real audited path."""
    config = load_config(tmp_path / "audit")
    for i in range(N // 2):
        with audit_session("convert", {"i": i}, software={"medseg": "test"}, config=config):
            pass
    return config


def _report(config: AuditConfig) -> VerifyReport:
    with AuditStore.open(config, create=False) as store:
        return verify_store(store)


def _tamper(config: AuditConfig, action: Callable[[sqlite3.Connection], None]) -> None:
    """Run raw SQL the way an attacker with file access would: triggers dropped first."""
    conn = sqlite3.connect(config.db_path, isolation_level=None)
    for name in TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    action(conn)
    conn.close()


def _row(conn: sqlite3.Connection, seq: int) -> dict:
    cols = ("seq", "ts", "kind", "invocation", "command", "os_user", "operator", "outcome", "body", "prev_hash", "hash")
    values = conn.execute(f"SELECT {', '.join(cols)} FROM events WHERE seq = ?", (seq,)).fetchone()
    return dict(zip(cols, values, strict=True))


def _insert(conn: sqlite3.Connection, row: dict) -> None:
    conn.execute(f"INSERT INTO events ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def _forge(conn: sqlite3.Connection, template_seq: int, seq: int, prev_hash: str, **changes: object) -> dict:
    """A well-formed record with a correctly computed hash, as a forger who knows the algorithm makes it."""
    row = _row(conn, template_seq)
    body = json.loads(row["body"]) | {"seq": seq, "prev_hash": prev_hash} | changes
    digest = chain_hash(prev_hash, body)
    return (
        row
        | {"seq": seq, "body": canonical_json(body), "prev_hash": prev_hash, "hash": digest}
        | {k: v for k, v in changes.items() if k in row}
    )


def _assert_first(config: AuditConfig, kind: str, seq: int | None) -> None:
    report = _report(config)
    assert not report.ok
    first = report.first
    assert first is not None
    assert (first.kind, first.seq) == (kind, seq), report.problems


def test_intact_chain_verifies(chain: AuditConfig) -> None:
    report = _report(chain)
    assert report.ok, report.problems
    assert report.records == N and report.head_seq == N and not report.notes


def test_edited_body(chain: AuditConfig) -> None:
    _tamper(
        chain, lambda c: c.execute("UPDATE events SET body = replace(body, '\"convert\"', '\"infer\"') WHERE seq=5")
    )
    _assert_first(chain, "edited", 5)


def test_edited_indexed_column(chain: AuditConfig) -> None:
    _tamper(chain, lambda c: c.execute("UPDATE events SET os_user = 'someone-else' WHERE seq = 4"))
    _assert_first(chain, "edited", 4)


def test_rewritten_record_with_recomputed_hash(chain: AuditConfig) -> None:
    def rewrite(conn: sqlite3.Connection) -> None:
        forged = _forge(conn, 5, 5, _row(conn, 5)["prev_hash"], outcome="success", command="infer")
        conn.execute("DELETE FROM events WHERE seq = 5")
        _insert(conn, forged)

    _tamper(chain, rewrite)
    _assert_first(chain, "edited", 5)


def test_deleted_record(chain: AuditConfig) -> None:
    _tamper(chain, lambda c: c.execute("DELETE FROM events WHERE seq = 6"))
    _assert_first(chain, "deleted", 6)


def test_deleted_record_and_renumbered(chain: AuditConfig) -> None:
    def delete_and_renumber(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM events WHERE seq = 3")
        for seq in range(4, N + 1):
            conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (seq - 1, seq))
        conn.execute("UPDATE chain_head SET seq = ?", (N - 1,))

    _tamper(chain, delete_and_renumber)
    _assert_first(chain, "deleted", 3)


def test_swapped_records(chain: AuditConfig) -> None:
    def swap(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE events SET seq = -1 WHERE seq = 7")
        conn.execute("UPDATE events SET seq = 7 WHERE seq = 8")
        conn.execute("UPDATE events SET seq = 8 WHERE seq = -1")

    _tamper(chain, swap)
    _assert_first(chain, "reordered", 7)


def test_swapped_distant_records(chain: AuditConfig) -> None:
    def swap(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE events SET seq = -1 WHERE seq = 2")
        conn.execute("UPDATE events SET seq = 2 WHERE seq = 9")
        conn.execute("UPDATE events SET seq = 9 WHERE seq = -1")

    _tamper(chain, swap)
    _assert_first(chain, "reordered", 2)


def test_forged_record_inserted_in_the_middle(chain: AuditConfig) -> None:
    def insert(conn: sqlite3.Connection) -> None:
        forged = _forge(conn, 4, 5, _row(conn, 4)["hash"], command="infer")
        for seq in range(N, 4, -1):
            conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (seq + 1, seq))
        _insert(conn, forged)
        conn.execute("UPDATE chain_head SET seq = ?", (N + 1,))

    _tamper(chain, insert)
    _assert_first(chain, "inserted", 5)


@pytest.mark.parametrize("move_head", [False, True])
def test_forged_record_appended_with_valid_link(chain: AuditConfig, move_head: bool) -> None:
    def append(conn: sqlite3.Connection) -> None:
        forged = _forge(conn, N, N + 1, _row(conn, N)["hash"])
        _insert(conn, forged)
        if move_head:
            conn.execute("UPDATE chain_head SET seq = ?, hash = ?", (N + 1, forged["hash"]))

    _tamper(chain, append)
    _assert_first(chain, "inserted", N + 1)


def test_forged_record_appended_with_bad_link(chain: AuditConfig) -> None:
    _tamper(chain, lambda c: _insert(c, _forge(c, N, N + 1, "ab" * 32)))
    _assert_first(chain, "inserted", N + 1)


@pytest.mark.parametrize("move_head", [False, True])
def test_truncated_tail(chain: AuditConfig, move_head: bool) -> None:
    def truncate(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM events WHERE seq > ?", (N - 2,))
        if move_head:
            conn.execute("UPDATE chain_head SET seq = ?, hash = ?", (N - 2, _row(conn, N - 2)["hash"]))

    _tamper(chain, truncate)
    _assert_first(chain, "truncated", N - 1)


def test_whole_tail_rewritten_is_caught_by_the_anchor(chain: AuditConfig) -> None:
    def rewrite_tail(conn: sqlite3.Connection) -> None:
        prev = _row(conn, 5)["prev_hash"]
        forged = []
        for seq in range(5, N + 1):
            row = _forge(conn, seq, seq, prev, params={"i": 99})
            forged.append(row)
            prev = row["hash"]
        conn.execute("DELETE FROM events WHERE seq >= 5")
        for row in forged:
            _insert(conn, row)
        conn.execute("UPDATE chain_head SET hash = ?", (prev,))

    _tamper(chain, rewrite_tail)
    _assert_first(chain, "edited", 5)


def test_missing_anchor_is_reported(chain: AuditConfig) -> None:
    chain.anchor_path.unlink()
    _assert_first(chain, "anchor", None)


def test_uncommitted_anchor_line_is_a_note_not_a_failure(chain: AuditConfig) -> None:
    with chain.anchor_path.open("a") as f:
        f.write(f"P {N + 1} {'cd' * 32}\n")
    report = _report(chain)
    assert report.ok and any("never committed" in note for note in report.notes)


def test_a_deleted_tail_with_its_commit_lines_removed_is_not_passed_as_a_crash(chain: AuditConfig) -> None:
    """Records 7-10 deleted, the head moved back and only their 'C' anchor lines removed once verified with notes
    ('never committed (crash or disk full)'): but a writer prepares record n only after n - 1 was committed, so
    prepared lines for 7 and 8 prove record 7 existed."""

    def truncate(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM events WHERE seq > 6")
        conn.execute("UPDATE chain_head SET seq = ?, hash = ?", (6, _row(conn, 6)["hash"]))

    _tamper(chain, truncate)
    lines = chain.anchor_path.read_text().splitlines()
    chain.anchor_path.write_text("".join(f"{line}\n" for line in lines if not (line.startswith("C ")
                                         and int(line.split()[1]) > 6)))  # fmt: skip
    _assert_first(chain, "truncated", 7)


def test_crashed_command_is_a_note(tmp_path: Path) -> None:
    config = load_config(tmp_path / "audit")
    with pytest.raises(SystemExit), audit_session("convert", {}, software={"medseg": "t"}, config=config):
        raise SystemExit(3)
    with AuditStore.open(config) as store:
        store.append(_start_only(store))
    report = _report(config)
    assert report.ok and any("without an end event" in note for note in report.notes)


def _start_only(store: AuditStore) -> AuditEvent:
    return AuditEvent("start", "crashed", "infer", {}, "u", None, "h", 1, {"medseg": "t"}, "2026-01-01T00:00:00Z")
