"""Filter stored records by time, command, user, outcome and kind (`medseg audit show`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from medseg.audit.record import ChainedRecord
from medseg.audit.store import AuditStore

_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> str:
    """ISO 8601 date/time (UTC when no zone is given) or a relative age like '30m', '24h', '7d' -> stored form."""
    text = text.strip()
    match = _RELATIVE.match(text)
    try:
        if match:
            moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: int(match[1])})
        else:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"not an ISO 8601 time or age like 24h/7d: {text!r}") from exc
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    except OverflowError as exc:  # an age beyond year 1, or a time that in UTC falls before year 1 or after 9999
        raise ValueError(f"out of the range of dates (years 1 to 9999 UTC): {text!r}") from exc


@dataclass(frozen=True)
class RecordFilter:
    """All criteria are optional and combine with AND; `user` matches the OS user or the operator.

    `touching` holds path references or content digests: a record matches when one of its inputs or outputs has one.
    """

    since: str | None = None
    until: str | None = None
    command: str | None = None
    user: str | None = None
    outcome: str | None = None
    kind: str | None = None
    invocation: str | None = None
    mlflow_run_id: str | None = None
    touching: tuple[str, ...] = ()
    limit: int | None = None


def query_records(store: AuditStore, flt: RecordFilter) -> list[ChainedRecord]:
    """Matching records in sequence order; with `limit`, the newest `limit` of them."""
    clauses: list[str] = []
    args: list[object] = []
    for column, op, value in (
        ("ts", ">=", flt.since),
        ("ts", "<", flt.until),
        ("command", "=", flt.command),
        ("outcome", "=", flt.outcome),
        ("kind", "=", flt.kind),
        ("invocation", "=", flt.invocation),
        ("json_extract(body, '$.mlflow_run_id')", "=", flt.mlflow_run_id),
    ):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            args.append(value)
    if flt.user is not None:
        clauses.append("(os_user = ? OR operator = ?)")
        args.extend([flt.user, flt.user])
    if flt.touching:
        marks = ", ".join("?" * len(flt.touching))
        clauses.append(
            "EXISTS (SELECT 1 FROM (SELECT value FROM json_each(body, '$.inputs') UNION ALL "
            "SELECT value FROM json_each(body, '$.outputs')) "
            f"WHERE json_extract(value, '$.ref') IN ({marks}) OR json_extract(value, '$.sha256') IN ({marks}))"
        )
        args.extend([*flt.touching, *flt.touching])
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT seq, hash, body FROM events {where} ORDER BY seq DESC"
    if flt.limit is not None:
        sql += " LIMIT ?"
        args.append(int(flt.limit))
    rows = store.select(sql, args)
    return sorted(rows, key=lambda r: r.seq)


def unfinished_invocations(store: AuditStore) -> set[str]:
    """Invocations with a start event but no end event: still running, or crashed."""
    rows = store.execute_scalar_column("SELECT invocation FROM events GROUP BY invocation HAVING SUM(kind = 'end') = 0")
    return {str(r) for r in rows}
