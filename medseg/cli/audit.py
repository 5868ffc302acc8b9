"""`medseg audit verify|show|export|verify-export|keygen`: inspect and hand over the audit trail."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from medseg.cli.state import console

EXIT_TAMPERED = 1
AUDIT_DIR_HELP = (
    "Audit store folder (default: MEDSEG_AUDIT_DIR, else ~/.local/share/medseg/audit); its anchor log "
    "is in MEDSEG_AUDIT_ANCHOR_DIR when set, else in this folder."
)

EXAMPLES = """
Examples:

  medseg audit verify

  medseg audit show --since 24h --command infer --outcome failure

  medseg audit show --user alice --json > events.json

  medseg audit show --path study/ct.nii.gz

  medseg audit keygen auditor.key.pem auditor.pub.pem

  medseg audit export snapshot.json --key auditor.key.pem

  medseg audit verify-export snapshot.json --public-key auditor.pub.pem

Exit codes: 0 intact/ok, 1 integrity check failed (tampering, a broken chain, or audit.db lost, emptied or not
a sound SQLite database: restore it from a backup), 2 usage error, 4 the store could not be opened (I/O, locks).
"""

audit_app = typer.Typer(
    name="audit",
    help="Verify, search and export the hash-chained audit trail.",
    no_args_is_help=True,
    epilog=EXAMPLES,
)


def register(app: typer.Typer) -> None:
    """Add the `audit` command group to the app."""
    app.add_typer(audit_app, name="audit")


def _config(audit_dir: Path | None, anchor_dir: Path | None = None) -> Any:
    from medseg.audit.config import load_config

    return load_config(audit_dir, anchor_dir)


@audit_app.command("verify", epilog=EXAMPLES)
def verify(
    audit_dir: Path | None = typer.Option(None, "--audit-dir", help=AUDIT_DIR_HELP),
    anchor_dir: Path | None = typer.Option(
        None, "--anchor-dir", help="Folder of chain-anchor.log (default: MEDSEG_AUDIT_ANCHOR_DIR, else the store's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Check every record's hash and link, the head table and the anchor log; exit 0 only when intact."""
    from medseg.audit.store import AuditStore
    from medseg.audit.verify import verify_store

    with AuditStore.open(_config(audit_dir, anchor_dir), create=False) as store:
        report = verify_store(store)
    if as_json:
        console.result(json.dumps(report.to_json(), indent=1))
    else:
        for note in report.notes:
            console.warn(note)
        first = report.first
        if first is None:
            console.result(f"audit trail intact: {report.records} records, head {report.head_seq} {report.head_hash}")
        else:
            where = f"record {first.seq}" if first.seq is not None else "the anchor"
            console.result(f"audit trail NOT intact: first bad: {where} ({first.kind}): {first.message}")
            for problem in report.problems:
                if problem is not first:
                    console.result(f"  also: {problem.kind} at {problem.seq}: {problem.message}")
    if not report.ok:
        raise typer.Exit(EXIT_TAMPERED)


@audit_app.command("show", epilog=EXAMPLES)
def show(
    since: str | None = typer.Option(None, "--since", help="From this UTC time (ISO 8601) or age (30m, 24h, 7d)."),
    until: str | None = typer.Option(None, "--until", help="Before this UTC time (ISO 8601) or age."),
    command: str | None = typer.Option(None, "--command", help="Only this medseg command (e.g. infer)."),
    user: str | None = typer.Option(None, "--user", help="Only this OS user or operator identity."),
    outcome: str | None = typer.Option(
        None, "--outcome", help="success, failure, qc_rejected, interrupted, or started (start events)."
    ),
    path: Path | None = typer.Option(
        None,
        "--path",
        help="Only events that read or wrote this file/folder, or a folder holding it (matched by path or content).",
    ),
    all_events: bool = typer.Option(False, "--all-events", help="Also list start events (default: end events)."),
    limit: int = typer.Option(50, "--limit", min=1, help="Show at most the newest N matching events."),
    audit_dir: Path | None = typer.Option(None, "--audit-dir", help=AUDIT_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print matching records (with hashes) as a JSON array."),
) -> None:
    """List audit events, filtered by time, command, user and outcome; commands that never ended are marked."""
    from medseg.audit.query import RecordFilter, parse_time, query_records, unfinished_invocations
    from medseg.audit.record import OUTCOMES
    from medseg.audit.store import AuditStore
    from medseg.errors import UsageError

    if outcome is not None and outcome not in OUTCOMES:
        raise UsageError(f"unknown outcome {outcome!r}", hint=f"Use one of: {', '.join(OUTCOMES)}.")
    try:
        flt = RecordFilter(
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            command=command,
            user=user,
            outcome=outcome,
            kind=None if all_events or outcome == "started" else "end",
            limit=limit,
        )
    except ValueError as exc:
        raise UsageError(str(exc), hint="Example: --since 2026-11-23T08:00 or --since 24h.") from exc
    with AuditStore.open(_config(audit_dir), create=False) as store:
        if path is not None:
            flt = replace(flt, touching=_path_keys(path, store.path_key))
        records = query_records(store, flt)
        if flt.kind == "end" and outcome is None:
            open_ids = unfinished_invocations(store)
            extra = query_records(store, replace(flt, kind=None, limit=None))
            records = sorted(
                [*records, *(r for r in extra if r.body.get("invocation") in open_ids)], key=lambda r: r.seq
            )[-limit:]
    if as_json:
        console.result(json.dumps([r.to_json() for r in records], indent=1, ensure_ascii=False))
        return
    if not records:
        console.info("no matching audit events")
    for record in records:
        console.result(_line(record.body))


def _path_keys(path: Path, key: bytes) -> tuple[str, ...]:
    """What `show --path` matches: the path's reference and content digest, and the references of every folder
    above it up to the root, since commands record the study folder they read, not each file in it."""
    import os

    from medseg.audit.digest import describe_path, path_ref

    described = describe_path(path, key)
    own = (described.ref,) if described.sha256 is None else (described.ref, described.sha256)
    return own + tuple(path_ref(parent, key) for parent in Path(os.path.abspath(path)).parents)


def _line(body: dict[str, Any]) -> str:
    outcome = str(body.get("outcome"))
    if body.get("kind") == "start":
        outcome = "started"
    elif body.get("exit_code") not in (None, 0):
        outcome += f"({body.get('exit_code')})"
    who = str(body.get("os_user")) + (f"/{body['operator']}" if body.get("operator") else "")
    duration = f"{body['duration_ms'] / 1000:.1f}s" if isinstance(body.get("duration_ms"), int) else "-"
    detail = f" {body['outcome_detail']}" if body.get("outcome_detail") else ""
    model = f" model={body['model']['name']}@{body['model']['version']}" if body.get("model") else ""
    return _printable(
        f"{body.get('seq'):>6}  {body.get('ts')}  {body.get('command'):<10} {outcome:<14} {who:<20} "
        f"{duration:>8}  in={len(body.get('inputs') or [])} out={len(body.get('outputs') or [])}{model}{detail}"
    )


def _printable(text: str) -> str:
    """`text` with every character that is not printable (newlines, escape sequences, lone surrogates) written as
    its backslash escape: a stored value can never forge a line, or colour, in an auditor's view."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@audit_app.command("export", epilog=EXAMPLES)
def export(
    output: Path = typer.Argument(..., help="Snapshot file to write (JSON)."),
    key: Path = typer.Option(..., "--key", help="Ed25519 private key (PEM) to sign with; never keep it in a repo."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing snapshot."),
    audit_dir: Path | None = typer.Option(None, "--audit-dir", help=AUDIT_DIR_HELP),
) -> None:
    """Write a signed snapshot (all records, head, verification result) for an auditor; this export is audited."""
    from medseg.audit.export import build_snapshot
    from medseg.audit.session import os_user
    from medseg.audit.store import AuditStore
    from medseg.audit.verify import verify_store
    from medseg.cli.audited import audited
    from medseg.io.atomic import atomic_write_text, check_writable
    from medseg.keys import load_private_key

    config = _config(audit_dir)
    check_writable(output, overwrite)
    signing_key = load_private_key(key)
    with AuditStore.open(config, create=False) as store:  # as verify: never creates a store (a mistyped folder)
        verify_store(store)  # a lost or damaged store: IntegrityError, exit 1, before the export is recorded in it
    with audited("audit-export", {"overwrite": overwrite}, audit_dir=audit_dir) as rec:
        with AuditStore.open(config, create=False) as store:
            snapshot = build_snapshot(store, signing_key, {"os_user": os_user(), "operator": config.operator})
        atomic_write_text(output, json.dumps(snapshot, indent=1, ensure_ascii=False) + "\n", overwrite=overwrite)
        rec.add_outputs([output])
    verification = snapshot["verification"]
    if not verification["ok"]:
        console.warn("the audit trail does not verify; the snapshot records this (see its 'verification')")
    console.result(
        f"{output}: {len(snapshot['records'])} records up to {snapshot['head']['seq']}, "
        f"signed by key {snapshot['signature']['key_id']}"
    )


@audit_app.command("verify-export", epilog=EXAMPLES)
def verify_export(
    snapshot_path: Path = typer.Argument(..., help="Snapshot written by `medseg audit export`."),
    public_key: Path = typer.Option(..., "--public-key", help="The trusted Ed25519 public key (PEM)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Check a snapshot's signature against a trusted public key and re-walk its hash chain; exit 0 only when valid."""
    from medseg.audit.export import SnapshotCheck, read_snapshot, verify_snapshot
    from medseg.errors import IntegrityError
    from medseg.keys import load_public_key

    trusted = load_public_key(public_key)
    try:
        check = verify_snapshot(read_snapshot(snapshot_path), trusted)
    except IntegrityError as exc:  # damaged or altered text: NOT valid, exit 1, like any other alteration
        check = SnapshotCheck(problems=[exc.message])
    if as_json:
        console.result(json.dumps({**check.__dict__, "ok": check.ok}, indent=1))
    elif check.ok:
        console.result(f"{snapshot_path}: signature valid, {check.records} records intact")
    else:
        console.result(f"{snapshot_path}: NOT valid: " + "; ".join(check.problems))
    if not check.ok:
        raise typer.Exit(EXIT_TAMPERED)


@audit_app.command("keygen", epilog=EXAMPLES)
def keygen(
    private_key: Path = typer.Argument(..., help="Where to write the private key (PEM, mode 0600)."),
    public_key: Path = typer.Argument(..., help="Where to write the public key (PEM) to give to auditors."),
) -> None:
    """Create an Ed25519 key pair for signing exports (same as `medseg keys generate`; kept for existing scripts)."""
    from medseg.keys import write_keypair

    write_keypair(private_key, public_key)
    console.result(f"{private_key}: private key (keep offline, never commit); {public_key}: public key")
