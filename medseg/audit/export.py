"""Signed snapshots for auditors: every record, the head and a local verification result, signed with Ed25519.

The signature covers the canonical JSON of the snapshot without its `signature` member. Anyone holding the
public key checks it with `verify_snapshot`, which also re-walks the hash chain inside the snapshot.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medseg.audit.canonical import GENESIS_HASH, canonical_bytes, chain_hash
from medseg.audit.store import AuditStore, utc_now
from medseg.audit.verify import verify_store
from medseg.errors import AuditError, IntegrityError, InvalidInputError
from medseg.keys import key_id, raw_public

FORMAT = "medseg.audit.export/1"
EXPORT_ATTEMPTS = 20


def build_snapshot(store: AuditStore, key: Ed25519PrivateKey, exported_by: dict[str, Any]) -> dict[str, Any]:
    """Every record with its hash, the head, the local verification result, and the Ed25519 signature.

    Records and head are read in one snapshot; the verification must have seen the same head (commands may append
    meanwhile), else the export is taken again, so a snapshot never disagrees with itself."""
    for _ in range(EXPORT_ATTEMPTS):
        with store.snapshot():
            records = [r.to_json() for r in store.records()]
            head = store.head()
        report = verify_store(store)
        if report.head_seq == head.seq:
            break
    else:
        raise AuditError(
            f"the audit trail kept growing during {EXPORT_ATTEMPTS} export attempts",
            hint="Export again when fewer commands are running.",
        )
    payload: dict[str, Any] = {
        "format": FORMAT,
        "store_id": store.store_id,
        "exported_at": utc_now(),
        "exported_by": exported_by,
        "head": {"seq": head.seq, "hash": head.hash},
        "verification": report.to_json(),
        "records": records,
    }
    public = key.public_key()
    payload["signature"] = {
        "algorithm": "Ed25519",
        "key_id": key_id(public),
        "public_key": base64.b64encode(raw_public(public)).decode("ascii"),
        "value": base64.b64encode(key.sign(canonical_bytes(payload))).decode("ascii"),
    }
    return payload


@dataclass
class SnapshotCheck:
    """Result of checking a snapshot: signature, chain inside it, and the verification recorded at export."""

    signature_ok: bool = False
    chain_ok: bool = False
    problems: list[str] = field(default_factory=list)
    records: int = 0
    head_seq: int = 0

    @property
    def ok(self) -> bool:
        """True only when the signature holds and the records form an intact chain up to the head."""
        return self.signature_ok and self.chain_ok and not self.problems


def read_snapshot(path: Path) -> dict[str, Any]:
    """Parse a snapshot file: InvalidInputError (exit 3) when it cannot be read or is not a snapshot at all,
    IntegrityError (exit 1) when its text is not sound JSON (truncated, NaN or an out-of-range number, nested
    deeper than a parser follows): a damaged or altered snapshot, which the signature cannot vouch for."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"not a readable audit snapshot: {exc.strerror}", path=path) from exc
    try:
        snapshot = json.loads(text.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise IntegrityError("not sound JSON (nested too deeply): damaged or altered", path=path) from exc
    except ValueError as exc:
        raise IntegrityError(f"not sound JSON ({exc}): damaged or altered", path=path) from exc
    if not isinstance(snapshot, dict) or snapshot.get("format") != FORMAT:
        raise InvalidInputError(f"not a {FORMAT} snapshot", path=path)
    return snapshot


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def verify_snapshot(snapshot: dict[str, Any], public_key: Ed25519PublicKey) -> SnapshotCheck:
    """Check the signature against the trusted `public_key`, then every hash and link of the records inside; a
    value that has no canonical form (nested too deeply, a hash that is not hex) fails the check, never the tool."""
    check = SnapshotCheck()
    try:
        _verify_into(snapshot, public_key, check)
    except (ValueError, TypeError, RecursionError) as exc:
        check.chain_ok = False
        check.problems.append(f"the snapshot holds a value with no canonical form ({type(exc).__name__})")
    return check


def _verify_into(snapshot: dict[str, Any], public_key: Ed25519PublicKey, check: SnapshotCheck) -> None:
    shapes = {"signature": dict, "records": list, "head": dict, "verification": dict}
    wrong = [k for k, kind in shapes.items() if not isinstance(snapshot.get(k), kind)]
    if wrong or not all(isinstance(r, dict) for r in snapshot["records"]):
        check.problems.append(f"the snapshot's structure was changed ({', '.join(wrong) or 'records'})")
        return
    signature = snapshot["signature"]
    payload = {k: v for k, v in snapshot.items() if k != "signature"}
    try:
        public_key.verify(base64.b64decode(str(signature.get("value", ""))), canonical_bytes(payload))
        check.signature_ok = True
    except (InvalidSignature, ValueError):
        check.problems.append("signature does not match the given public key (snapshot altered or other key)")
    records = snapshot.get("records") or []
    check.records = len(records)
    check.chain_ok = _check_records(records, snapshot.get("head") or {}, check.problems)
    if not (snapshot.get("verification") or {}).get("ok", False):
        check.problems.append("the store did not verify when it was exported (see 'verification')")


def _check_records(records: list[dict[str, Any]], head: dict[str, Any], problems: list[str]) -> bool:
    prev_hash, prev_seq = GENESIS_HASH, 0
    for record in records:
        body = {k: v for k, v in record.items() if k != "hash"}
        seq = body.get("seq")
        if seq != prev_seq + 1 or body.get("prev_hash") != prev_hash:
            problems.append(f"record {seq}: does not follow record {prev_seq}")
            return False
        if chain_hash(str(body.get("prev_hash")), body) != record.get("hash"):
            problems.append(f"record {seq}: content does not match its hash")
            return False
        prev_hash, prev_seq = str(record["hash"]), int(seq)
    if head.get("seq") != prev_seq or head.get("hash") != prev_hash:
        problems.append(f"the head (record {head.get('seq')}) is not the last record ({prev_seq})")
        return False
    return True
