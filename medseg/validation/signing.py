"""Part 11 style e-signatures on a validation folder: an in-toto Statement in a DSSE envelope, signed with Ed25519.

The Statement's subjects are every file of the folder (report.json, report.html, each artifact) with its SHA-256,
and its predicate the signer's printed name, the meaning of the signature and the UTC time (21 CFR 11.50), plus
the report's model, set and verdict; so the signature is bound to this record and fails on any other (11.70).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medseg.audit.canonical import canonical_bytes
from medseg.audit.digest import file_sha256
from medseg.errors import IntegrityError, InvalidInputError, ProcessingError, UsageError
from medseg.io.atomic import _umask, atomic_write_text, is_unfinished_write, temporary_prefix, temporary_suffix
from medseg.keys import key_id
from medseg.signals import deferred_interrupt
from medseg.validation.report import REPORT, SIGNATURE, artifacts, files_in, read_report

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://medseg.invalid/validation-signature/v1"
MEANINGS = ("reviewed", "approved")
APPROVAL = "approved"  # the one meaning that claims the record supports release


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: 'DSSEv1 <len> <type> <len> <payload>'."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class SignatureInfo:
    """What a person's signature states: printed name, meaning and UTC time, and the key that made it."""

    signer: str
    meaning: str
    signed_at_utc: str
    key_id: str


def signature_info(signer: str, meaning: str, public: Ed25519PublicKey, now: datetime | None = None) -> SignatureInfo:
    """Check the name and meaning and stamp the UTC time."""
    if meaning not in MEANINGS:
        raise UsageError(f"unknown signature meaning {meaning!r}", hint=f"Use one of: {', '.join(MEANINGS)}.")
    if not signer.strip():
        raise UsageError("the signer's printed name is empty", hint="Pass --signer 'First Last'.")
    when = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return SignatureInfo(signer.strip(), meaning, when, key_id(public))


def statement(folder: Path, info: SignatureInfo, staged: dict[str, Path] | None = None) -> dict[str, Any]:
    """The in-toto Statement over every file in the folder (except the envelope), as it will be once each `staged`
    temporary file (final name -> path in the folder) has replaced its file."""
    report = read_report(folder)
    staged = staged or {}
    temporary = {p.relative_to(folder).as_posix() for p in staged.values()}
    digests = {k: v for k, v in files_in(folder).items() if k not in temporary} | {
        name: file_sha256(path) for name, path in staged.items()
    }
    subjects = [{"name": name, "digest": {"sha256": sha}} for name, sha in sorted(digests.items()) if name != SIGNATURE]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "signer": info.signer, "meaning": info.meaning, "signed_at_utc": info.signed_at_utc, "key_id": info.key_id,
            "model": report["model"]["name"] + " " + report["model"]["version"],
            "model_weights_sha256": report["model"]["weights_sha256"], "set_digest": report["set"]["set_digest"],
            "verdict": report["acceptance"]["verdict"],
            # what the signer signed: whether the record supports release, and why not (unproven independence...)
            "release_supported": (report.get("release") or {}).get("supported"),
            "release_reasons": list((report.get("release") or {}).get("reasons") or []),
        },
    }  # fmt: skip


def _require_unsigned_report(folder: Path) -> None:
    if (folder / SIGNATURE).exists():
        raise UsageError("the report is already signed", path=folder / SIGNATURE,
                         hint="A signed report is not re-signed; validate again for a new record.")  # fmt: skip
    if not (folder / REPORT).is_file():
        raise UsageError(f"no {REPORT} here", path=folder, hint="Pass the output folder of `medseg validate`.")


def require_release_for_approval(report: dict[str, Any], meaning: str, path: Path) -> None:
    """Refuse an 'approved' signature on a record whose own release decision (report.json `release`, written by
    `medseg validate`) is not 'supported': an approval would state what the record itself denies (validate exited
    1 for it). 'reviewed' is allowed on any record: it states only that a person read it."""
    if meaning != APPROVAL:
        return
    release = report.get("release") if isinstance(report, dict) else None
    if isinstance(release, dict) and release.get("supported") is True:
        return
    reasons = release.get("reasons") if isinstance(release, dict) else None
    why = f": {reasons[0]}" if isinstance(reasons, list) and reasons else " (no release decision in it)"
    raise IntegrityError(
        f"the record does not support release{why}; it cannot be signed as approved", path=path,
        hint="Sign it --meaning reviewed, or fix what report.json's release reasons name and validate again",
    )  # fmt: skip


def check_signable(folder: Path, meaning: str) -> dict[str, Any]:
    """The report of an unsigned validation folder, after checking it is what `medseg validate` wrote: report.json's
    SHA-256 is recorded as an output of a `validate` run in the audit trail, and every artifact it lists is intact.
    A report edited between validation and signature (a verdict turned to pass) is refused, not signed; so is an
    'approved' signature on a record whose release is not supported (`require_release_for_approval`)."""
    from medseg.audit.config import load_config
    from medseg.audit.query import RecordFilter, query_records
    from medseg.audit.store import AuditStore

    _require_unsigned_report(folder)
    try:
        report = read_report(folder)
    except ValueError as exc:
        raise IntegrityError(f"{REPORT} is not valid JSON", path=folder / REPORT) from exc
    digest = file_sha256(folder / REPORT)
    with AuditStore.open(load_config(), create=False) as store:
        runs = query_records(store, RecordFilter(command="validate", kind="end", touching=(digest,)))
    if not any(o.get("sha256") == digest for r in runs for o in r.body.get("outputs") or []):
        raise IntegrityError(
            f"{REPORT} (SHA-256 {digest[:12]}...) is not an output of any `medseg validate` run in the audit trail",
            path=folder / REPORT,
            hint="It was changed after validation, or validated elsewhere: sign where the audit trail recorded it.",
        )
    odd = _entries_not_files(folder)
    if odd:
        raise IntegrityError(f"{odd[0]}", path=folder, hint="Restore the folder as validate wrote it.")
    listed = report.get("artifacts") if isinstance(report, dict) else None
    present = artifacts(folder)
    if listed != present:
        listed = listed if isinstance(listed, dict) else {}
        changed = sorted(k for k in listed.keys() | present.keys() if listed.get(k) != present.get(k))
        raise IntegrityError(f"{len(changed)} artifact(s) differ from {REPORT}, first {changed[0]}",
                             path=folder, hint="Restore the folder as validate wrote it.")  # fmt: skip
    require_release_for_approval(report, meaning, folder / REPORT)
    return report


def envelope_text(envelope: dict[str, Any]) -> str:
    """The one text form of a signature envelope, as `sign_folder` writes it and `verify_folder` requires it."""
    return json.dumps(envelope, indent=1) + "\n"


def sign_folder(
    folder: Path, key: Ed25519PrivateKey, info: SignatureInfo, staged: dict[str, Path] | None = None
) -> dict[str, Any]:
    """Write signature.dsse.json over the folder; refuses a folder that is already signed. With `staged` (final
    name -> a temporary file in the folder, from `staged_file`), the signature covers the folder as it will be with
    them in place, and they are moved into place just before the envelope (`_commit`): a failure or Ctrl-C before
    that leaves the folder as it was."""
    _require_unsigned_report(folder)
    staged = staged or {}
    payload = canonical_bytes(statement(folder, info, staged))
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode("ascii"),
                "signatures": [{"keyid": info.key_id, "sig": base64.b64encode(sig).decode("ascii")}]}  # fmt: skip
    if not staged:
        atomic_write_text(folder / SIGNATURE, envelope_text(envelope))
        return envelope
    pending = staged_file(folder, SIGNATURE)
    try:
        pending.write_text(envelope_text(envelope))
        _commit(folder, staged | {SIGNATURE: pending})
    finally:
        discard([*staged.values(), pending])
    return envelope


def staged_file(folder: Path, name: str) -> Path:
    """A new hidden temporary file in the folder (medseg.io.atomic's `.tmp-` prefix) for the next version of
    `name`: it lies beside the previews a rendering links to, and renames onto `name` on the same filesystem. It gets
    the mode an ordinary write would (0666 less the umask, as medseg.io.atomic), not mkstemp's 0600: a signed file
    another account cannot read would make its `report verify` fail."""
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(name), suffix=temporary_suffix(name), dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return folder / Path(tmp).name  # in the folder's own form: a relative folder gives a relative path


def discard(paths: list[Path]) -> None:
    """Remove temporary files that were not moved into place."""
    for path in paths:
        path.unlink(missing_ok=True)


def clear_unfinished(folder: Path) -> None:
    """Remove the temporary files a killed `report sign` left in the folder (top level, `.tmp-` names): an unsigned
    record's report.json lists no such file, and they would block its signature as changed artifacts."""
    for entry in folder.iterdir():
        if is_unfinished_write(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink()


def _commit(folder: Path, staged: dict[str, Path]) -> None:
    """Rename the staged files onto their names, the envelope last, with Ctrl-C/SIGTERM held back; on an error the
    files already replaced are put back from hard links to the originals, so the folder is signed or as it was."""
    backups: dict[Path, Path] = {}
    with deferred_interrupt():
        try:
            for name, path in staged.items():
                with path.open("rb+") as f:
                    os.fsync(f.fileno())
                if (folder / name).is_file():
                    backups[folder / name] = folder / f"{temporary_prefix(name)}orig-{os.getpid()}"
                    os.link(folder / name, backups[folder / name])
            for name, path in staged.items():
                os.replace(path, folder / name)
        except OSError as exc:
            for target, backup in backups.items():
                os.replace(backup, target)
            raise ProcessingError(
                f"cannot write the signed files: {exc.strerror or exc}",
                path=folder,
                hint="Check free disk space and permissions; the folder is as it was.",
            ) from exc
        finally:
            discard([b for b in backups.values() if b.exists()])


@dataclass
class Verification:
    """The outcome: the signature's statement (when it verified) and every problem found, named."""

    problems: list[str] = field(default_factory=list)
    predicate: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _envelope(folder: Path) -> dict[str, Any] | None:
    """The signature envelope, only when the file holds exactly what `sign_folder` writes: its three fields and one
    signature entry (keyid, sig), in that order and text form. None for anything else (a damaged or edited
    envelope: verification fails). InvalidInputError (exit 3) when the folder does not exist."""
    if not folder.is_dir():
        raise InvalidInputError("no such report folder", path=folder, hint="Pass a signed validation folder.")
    try:
        text = (folder / SIGNATURE).read_text(encoding="utf-8")
        env = json.loads(text)
        entry = env["signatures"][0]
        canonical = {"payloadType": env["payloadType"], "payload": env["payload"],
                     "signatures": [{"keyid": entry["keyid"], "sig": entry["sig"]}]}  # fmt: skip
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return env if envelope_text(canonical) == text else None


def _entries_not_files(folder: Path) -> list[str]:
    """Links, pipes and other non-files, and empty folders, inside a report folder: content the file digests cannot
    cover (a link to a folder is not descended into)."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                found.append(f"{path.relative_to(folder).as_posix()}: a link, not covered by the signature")
            elif name in files and not stat.S_ISREG(path.lstat().st_mode):
                found.append(f"{path.relative_to(folder).as_posix()}: not a regular file, not covered by the signature")
        if not dirs and not files and Path(root) != folder:
            found.append(f"{Path(root).relative_to(folder).as_posix()}/: an empty folder, not covered by the signature")
    return found


def _unreadable(path: Path) -> ProcessingError:
    """The error for a file or folder of the record this account may not read: not evidence of tampering."""
    return ProcessingError(
        f"cannot read {path}: permission denied",
        hint="Run report verify as an account that can read every file of the record, or ask its owner to grant "
        "read access; nothing was checked",
    )


def _require_readable(folder: Path) -> None:
    """ProcessingError (exit 4) naming the first file or folder of the record this account cannot read, so that a
    permission problem is never reported as a damaged or edited record. Links and non-files are not opened."""

    def refuse(exc: OSError) -> None:
        if isinstance(exc, PermissionError):
            raise _unreadable(Path(exc.filename or folder)) from exc

    for root, _dirs, files in os.walk(folder, onerror=refuse):
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                path.open("rb").close()
            except PermissionError as exc:
                raise _unreadable(path) from exc


def verify_folder(folder: Path, public: Ed25519PublicKey) -> Verification:
    """Check the signature (the envelope byte for byte as `sign_folder` writes it, one signature, by this key),
    then every file against the signed digests and report.json's artifact list. A missing signature is a problem
    (exit 1), a missing folder InvalidInputError, a file this account may not read ProcessingError (exit 4)."""
    result = Verification()
    if folder.is_dir():
        _require_readable(folder)
    env = _envelope(folder)
    if not (folder / SIGNATURE).exists():
        result.problems.append(f"{SIGNATURE}: missing (the report was never signed, or its signature was removed)")
        return result
    try:
        payload = base64.b64decode(env["payload"], validate=True)  # type: ignore[index]
        sig = base64.b64decode(env["signatures"][0]["sig"], validate=True)  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        result.problems.append(
            f"{SIGNATURE}: not a readable signature envelope as `report sign` writes it (damaged or edited)"
        )
        return result
    signer_key = env["signatures"][0]["keyid"]  # type: ignore[index]
    if signer_key != key_id(public):
        result.problems.append(f"signature does not verify with key {key_id(public)}: the envelope names key "
                               f"{str(signer_key)[:32]} (another key, or the envelope edited)")  # fmt: skip
        return result
    if env["payloadType"] != PAYLOAD_TYPE or not _valid(public, sig, pae(env["payloadType"], payload)):  # type: ignore[index]
        result.problems.append(f"signature does not verify with key {key_id(public)} (other key, or envelope edited)")
        return result
    stmt = json.loads(payload)
    result.predicate = stmt.get("predicate", {})
    signed = {s["name"]: s["digest"]["sha256"] for s in stmt.get("subject", [])}
    present = {k: v for k, v in files_in(folder).items() if k != SIGNATURE}
    for name in sorted(signed.keys() | present.keys()):
        if name not in present:
            result.problems.append(f"{name}: signed but missing")
        elif name not in signed:
            result.problems.append(f"{name}: not covered by the signature (added after signing)")
        elif signed[name] != present[name]:
            result.problems.append(
                f"{name}: changed after signing (SHA-256 {present[name][:12]}..., signed {signed[name][:12]}...)"
            )
    if REPORT in present:
        try:
            listed = read_report(folder).get("artifacts", {})
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            result.problems.append(f"{REPORT}: no longer readable JSON")
            listed = {}
        if not isinstance(listed, dict):
            result.problems.append(f"{REPORT}: its artifact list is not a table of names and digests")
            listed = {}
        for name, sha in listed.items():
            if present.get(name) != sha:
                result.problems.append(f"{name}: differs from the digest report.json lists")
    result.problems.extend(_entries_not_files(folder))
    return result


def _valid(public: Ed25519PublicKey, sig: bytes, message: bytes) -> bool:
    try:
        public.verify(sig, message)
    except InvalidSignature:
        return False
    return True
