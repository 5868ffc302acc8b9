"""One audited command: a 'start' event before any work, an 'end' event with outcome, digests and duration after.

The start event doubles as the test-write: if the store cannot be written, the command stops before doing anything.
If the end event cannot be written, the output files this command registered are removed, because an output
without its audit record must not reach a clinician.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from medseg.audit.canonical import JsonValue, normalise
from medseg.audit.config import AuditConfig, load_config
from medseg.audit.digest import PathDigest, describe_path, keyed_ref, path_ref
from medseg.audit.record import AuditEvent
from medseg.audit.store import AuditStore, utc_now
from medseg.errors import AuditError, MedsegError, QCRejectedError
from medseg.guard import guarding, resolved
from medseg.parallel import in_background
from medseg.signals import deferred_interrupt

EXIT_INTERRUPTED = 130
_UID = re.compile(r"^[0-9]+(\.[0-9]+){2,}$")
_UID_INSIDE = re.compile(r"[0-9]+(?:\.[0-9]+){2,}")  # inside a longer value ('<uid>#2'): 4+ parts or 10+ characters
_MAX_DETAIL = 200
_SERIES_KEY = re.compile(r"^auto-[0-9a-f]{16}$")


def os_user() -> str:
    """The OS account running the command (uid when the account has no name, e.g. in containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _identifying(text: str) -> bool:
    """DICOM UIDs and path-like strings are kept only as keyed references (they can identify a patient)."""
    return (
        bool(_UID.match(text.strip()) or any(len(m) >= 10 or m.count(".") >= 3 for m in _UID_INSIDE.findall(text)))
        or "/" in text or "\\" in text or text.strip().startswith("~")
    )  # fmt: skip


class KeyedText(str):
    """A parameter value the audit trail keeps only as a keyed reference: free text that may carry PHI."""


def series_param(value: str | None) -> str | None:
    """A `--series` value for the audit params: medseg's own series key (`auto-<16 hex>`, from `medseg series`) as
    it is; anything else (a SeriesInstanceUID, or free text such as a patient-named folder typed by mistake) as a
    keyed reference, so no patient detail reaches the trail or the signed exports made from it."""
    if value is None or _SERIES_KEY.match(value):
        return value
    return KeyedText(value)


def _escape_undecodable(text: str) -> str:
    """A parameter typed with bytes that are not UTF-8 (Python keeps them as lone surrogates, which UTF-8 cannot
    store: the start event failed as an internal error) with each such character written as its `\\uXXXX` escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def params_to_json(params: Mapping[str, Any] | None, key: bytes) -> dict[str, JsonValue]:
    """Normalise command parameters; paths, path-like strings, DICOM UIDs and `KeyedText` become keyed references."""

    def convert(value: Any) -> Any:
        if isinstance(value, PurePath):
            return path_ref(Path(value), key)
        if isinstance(value, KeyedText):
            return keyed_ref(str(value), key)
        if isinstance(value, str) and _identifying(value):
            return keyed_ref(value, key)
        if isinstance(value, str):
            return _escape_undecodable(value)
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value

    result = normalise(convert(dict(params or {})))
    assert isinstance(result, dict)
    return result


def exit_code_of(exc: BaseException | None) -> int:
    """The exit code the CLI gives for `exc`: MedsegError's own, 130 for Ctrl-C, 4 for anything unexpected."""
    if exc is None:
        return 0
    if isinstance(exc, MedsegError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) else 4


def outcome_of(exc: BaseException | None, code: int) -> str:
    """success / qc_rejected / interrupted / failure, from the exception and exit code."""
    if isinstance(exc, QCRejectedError) or code == QCRejectedError.exit_code:
        return "qc_rejected"
    if code == EXIT_INTERRUPTED:
        return "interrupted"
    return "success" if code == 0 else "failure"


@dataclass
class AuditRecorder:
    """What the command tells the audit trail while it runs (`rec` in `with audited(...) as rec`)."""

    command: str
    params: dict[str, JsonValue]
    path_key: bytes
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: str = field(default_factory=utc_now)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    output_paths: list[Path] = field(default_factory=list)
    input_paths: list[Path] = field(default_factory=list)
    targets: dict[Path, bool] = field(default_factory=dict)
    pending: list[Path] = field(default_factory=list)
    opened_at: float = field(default_factory=time.time)
    model: dict[str, str] | None = None
    outcome_detail: str | None = None
    mlflow_run_id: str | None = None
    mlflow_tracking_uri: str | None = None
    _deferred: list[tuple[int, Future[PathDigest]]] = field(default_factory=list, repr=False)

    def add_inputs(
        self, paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str], *, background: bool = False
    ) -> None:
        """Record files or folders read, by keyed path reference and SHA-256 of their content.

        `background`: hash on a helper thread (hashing releases the GIL) while the command works, and wait for it when
        the end event is written; only for inputs the command reads and never changes."""
        for p in _as_list(paths):
            self.input_paths.append(Path(p))
            if background:
                self._deferred.append((len(self.inputs), in_background(describe_path, Path(p), self.path_key)))
                self.inputs.append({})
            else:
                self.inputs.append(describe_path(Path(p), self.path_key).to_json())

    def settle_inputs(self) -> None:
        """Wait for the digests of inputs added with `background=True` and put them in their places."""
        for index, future in self._deferred:
            self.inputs[index] = future.result().to_json()
        self._deferred.clear()

    def will_write(self, paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> None:
        """Register outputs before writing them: whether each exists now (one that did is 'extended, not created'
        and never removed as unaudited), and, if the command stops before `add_outputs` records one, it is
        recorded when the end event is written, provided it exists then (a finished output never goes unrecorded)."""
        for p in _as_list(paths):
            self.targets.setdefault(resolved(Path(p)), Path(p).exists())
            if Path(p) not in self.pending:
                self.pending.append(Path(p))

    def add_outputs(self, paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> None:
        """Record files written (call after writing them), by keyed path reference and SHA-256."""
        for p in _as_list(paths):
            described = describe_path(Path(p), self.path_key).to_json()
            self.output_paths.append(Path(p))
            self.outputs.append(described)
            if Path(p) in self.pending:
                self.pending.remove(Path(p))

    def settle_outputs(self) -> None:
        """Record the registered outputs (`will_write`) that exist but were never recorded, as the end event is
        written: a command stopped between finishing an output and `add_outputs` leaves no unrecorded output."""
        for p in list(self.pending):
            if p.is_file() and self._written_here(p):
                self.add_outputs([p])
        self.pending.clear()

    def _written_here(self, path: Path) -> bool:
        """A registered output this command wrote: new, or modified since it started (an earlier run's file that
        the command never reached is not its output)."""
        try:
            return not self.targets.get(resolved(path)) or path.stat().st_mtime >= self.opened_at - 1
        except OSError:
            return False

    def kept_on_failure(self, path: Path) -> bool:
        """True for an output `_remove_unaudited` must not delete: a recorded input file, or a
        file that existed before this command wrote it (overwritten or extended, not created)."""
        target = resolved(path)
        if self.targets.get(target):
            return True
        return any(target == resolved(q) for q in self.input_paths)

    def set_model(self, name: str, version: str, sha256: str) -> None:
        """Record the model used: name, version and weights digest."""
        self.model = {"name": str(name), "version": str(version), "sha256": str(sha256)}

    def set_outcome_detail(self, detail: str) -> None:
        """A short machine-readable detail such as 'qc_rejected' or 'qc_flagged:volume' (never PHI)."""
        self.outcome_detail = str(detail)[:_MAX_DETAIL]

    def link_mlflow_run(self, run_id: str, tracking_uri: str | None = None) -> None:
        """Attach this command's events to an MLflow run when it ends (default: the current tracking URI)."""
        self.mlflow_run_id = str(run_id)
        self.mlflow_tracking_uri = tracking_uri


def _as_list(paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
    return [paths] if isinstance(paths, str | os.PathLike) else list(paths)


def _event(rec: AuditRecorder, kind: str, software: dict[str, str], operator: str | None, **end: Any) -> AuditEvent:
    return AuditEvent(
        kind=kind,
        invocation=rec.invocation,
        command=rec.command,
        params=rec.params,
        os_user=os_user(),
        operator=operator,
        host=socket.gethostname(),
        pid=os.getpid(),
        software=software,
        started_at=rec.started_at,
        inputs=list(rec.inputs) if kind == "end" else [],
        outputs=list(rec.outputs) if kind == "end" else [],
        model=rec.model if kind == "end" else None,
        outcome_detail=rec.outcome_detail if kind == "end" else None,
        mlflow_run_id=rec.mlflow_run_id,
        **end,
    )


@contextlib.contextmanager
def audit_session(
    command: str,
    params: Mapping[str, Any] | None = None,
    *,
    software: Mapping[str, str],
    config: AuditConfig | None = None,
) -> Iterator[AuditRecorder]:
    """Audit one command: raises AuditError before the work when the trail cannot be written."""
    config = config or load_config()
    store = AuditStore.open(config)
    try:
        rec = AuditRecorder(command, params_to_json(params, store.path_key), store.path_key)
        with guarding([config.audit_dir, config.anchor_dir], rec.targets):
            soft = {str(k): str(v) for k, v in software.items()}
            store.append(_event(rec, "start", soft, config.operator))
            t0 = time.monotonic()
            error: BaseException | None = None
            try:
                yield rec
            except BaseException as exc:
                error = exc
                raise
            finally:
                _finish(store, rec, _EndEvent(rec, soft, config.operator, error, t0))
    finally:
        store.close()


@dataclass
class _EndEvent:
    """Makes the end event at the moment it is written (under the store's write lock), so that a Ctrl-C or SIGTERM
    held back while the command waited for that lock is what the event records: outcome interrupted, exit 130, the
    exit code the command then gives."""

    rec: AuditRecorder
    software: dict[str, str]
    operator: str | None
    error: BaseException | None
    t0: float
    interrupts: list[int] = field(default_factory=list)
    recorded_interrupt: bool = False

    def __call__(self) -> AuditEvent:
        error = self.error
        if error is None and self.interrupts:
            error = KeyboardInterrupt()
            self.recorded_interrupt = True
        code = exit_code_of(error)
        return _event(
            self.rec, "end", self.software, self.operator,
            outcome=outcome_of(error, code),
            exit_code=code,
            error_type=None if error is None else type(error).__name__,
            duration_ms=round((time.monotonic() - self.t0) * 1000),
        )  # fmt: skip


def _finish(store: AuditStore, rec: AuditRecorder, end: _EndEvent) -> None:
    """Write the end event with Ctrl-C and SIGTERM held back, so that an interrupt cannot cut the write short and
    leave a finished output without its record; when the write fails for any reason, the outputs this command
    registered are removed (an output without its audit record must not be used), except recorded inputs and files
    that existed before the command (`AuditRecorder.kept_on_failure`)."""
    failure: BaseException | None = None
    try:
        with deferred_interrupt(noted=end.interrupts):
            try:
                rec.settle_inputs()
                rec.settle_outputs()
                store.append(end)
            except BaseException as exc:
                failure = exc
    except KeyboardInterrupt:
        pass  # re-raised below when the end event records it; one that came later leaves the recorded exit code
    if failure is not None:
        _remove_unaudited(rec, failure, end.error)
    if end.recorded_interrupt:
        raise KeyboardInterrupt
    if rec.mlflow_run_id:
        from medseg.audit.mlflow_link import attach_events_to_mlflow

        try:
            attach_events_to_mlflow(store, rec.mlflow_run_id, rec.mlflow_tracking_uri)  # local record exists
        except AuditError:
            if end.error is None:
                raise


def _remove_unaudited(rec: AuditRecorder, failure: BaseException, error: BaseException | None) -> None:
    """Remove the registered outputs after the end event could not be written, and raise: an AuditError that says
    how many were removed (from the command's own error, if any), or `failure` itself when it is not an AuditError
    and nothing was removed."""
    removed = [p for p in rec.output_paths if p.is_file() and not rec.kept_on_failure(p) and _unlink(p)]
    if not isinstance(failure, AuditError):
        if not removed:
            raise failure
        raise AuditError(
            f"cannot write the audit trail ({type(failure).__name__}); removed {len(removed)} unaudited output file(s)",
            hint="The outputs were removed because they have no audit record; rerun the command",
        ) from failure
    if not removed and error is None:
        raise failure
    message = failure.message + (f"; removed {len(removed)} unaudited output file(s)" if removed else "")
    raise AuditError(message, path=failure.path, hint=failure.hint) from (error or failure)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except OSError:
        return False
    return True
