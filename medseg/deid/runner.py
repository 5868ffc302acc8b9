"""De-identify a file or a folder tree into OUTPUT/study/series/instance.dcm, resumably, with a run manifest.

Each finished file appends a state record to OUTPUT/.deid-state/journal.jsonl, so a re-run with the same key skips
what is done and completes the rest; outputs are written atomically, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian

from medseg.deid import engine, rawcopy
from medseg.deid.identity import set_identity
from medseg.deid.keyed import KeyedMapper
from medseg.deid.overlays import clean_overlays
from medseg.deid.pixels import PixelOutcome, clear_unused_bits, scan_and_clean
from medseg.deid.reading import ReadProblem, corrupt_element, read_input
from medseg.deid.writer import convert_values, encode_dataset, relative_name, source_transfer_syntax, to_little_endian
from medseg.errors import InvalidInputError, MedsegError, UsageError
from medseg.io.atomic import atomic_write_text, sync_paths
from medseg.io.series import FolderWalk, walk_files
from medseg.keys import secret_id

STATE_DIR = ".deid-state"
MANIFEST = "deid-manifest.json"
QUARANTINE = "quarantine"
PENDING = f"{STATE_DIR}/pending"
JOURNAL = f"{STATE_DIR}/journal.jsonl"
INPUT_ID = f"{STATE_DIR}/input-id"


@dataclass(frozen=True)
class DeidSettings:
    """Choices of one run: Annex E options, whether pixels are scanned, --strict, and worker processes; copy_raw
    False writes every file through pydicom's full parse and encoder (the reference the raw copier is tested
    against, see medseg.deid.rawcopy)."""

    options: frozenset[str] = frozenset()
    scan_pixels: bool = True
    strict: bool = False
    workers: int = 1
    copy_raw: bool = True


@dataclass
class FileRecord:
    """One input file's line in the manifest: digests, where it went and why; never a value or a name."""

    input_ref: str
    input_digest: str  # `input_digest`: the input's SHA-256 keyed with the run's secret (no re-link without it)
    status: str  # written | quarantined | skipped | dropped | withdrawn (an earlier run's output removed)
    output: str | None = None
    output_sha256: str | None = None
    reason: str | None = None
    actions: dict[str, int] = field(default_factory=dict)
    pixels: dict[str, object] = field(default_factory=dict)
    resumed: bool = False


@dataclass
class RunResult:
    """All records of a run and the manifest's path."""

    records: list[FileRecord]
    manifest: Path

    def count(self, status: str) -> int:
        """Number of files with the given status."""
        return sum(r.status == status for r in self.records)


def usable_cpus() -> int:
    """CPUs this process may run on (the default number of workers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def discover(root: Path) -> FolderWalk:
    """Regular files under `root` (or `root` itself) in sorted order, and the entries never opened: named pipes,
    sockets and devices (reading one would block the run), broken links, symlinked folders, unreadable folders.
    The same walk as every other input of medseg (`medseg.io.series.walk_files`)."""
    return walk_files(root)


def _check_paths(src: Path, out: Path, key_id: str) -> None:
    if not src.exists():
        raise UsageError("input not found", path=src, hint="Pass a DICOM file or folder.")
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents or o in s.parents:
        raise UsageError("input and output overlap", path=out, hint="Write the output to a separate folder.")
    _check_output_place(out)
    if out.is_dir() and any(out.iterdir()):
        marker = out / STATE_DIR / "key-id"
        if not marker.is_file():
            raise UsageError("output folder is not empty and was not made by medseg deid", path=out,
                             hint="Choose a new or empty folder.")  # fmt: skip
        if marker.read_text().strip() != key_id:
            raise UsageError("output folder was made with another key, options or --pixels setting", path=out,
                             hint="Resume with the same key and settings, or use a new folder.")  # fmt: skip


def _input_identity(src: Path, mapper: KeyedMapper) -> str:
    """The keyed identity of a run's INPUT (its resolved path under the run's secret): an OUTPUT holds the release of
    one input only, so a resume can tell the same input from another one without the path being readable."""
    return "hmac-sha256:" + mapper.digest("input-root", str(src.resolve())).hex()


def _check_input_identity(out: Path, identity: str, resuming: bool) -> None:
    """Refuse a run of another INPUT into an OUTPUT made from a different one (exit 2): its outputs would mix with
    the first run's, which the manifest and the check of the second input know nothing of (review 20 #1). An
    OUTPUT made before the identity was recorded is adopted by the input resuming into it."""
    recorded = out / INPUT_ID
    if resuming and recorded.is_file() and recorded.read_text().strip() != identity:
        raise UsageError("output folder holds the release of another INPUT", path=out,
                         hint="Resume with the same INPUT, or use a new folder for this input.")  # fmt: skip


def _refuse_emptied_input(src: Path, out: Path, files: list[Path]) -> None:
    """Refuse (exit 3) an INPUT without a single DICOM file into an OUTPUT that holds a release: an unmounted share
    or a moved folder looks like every patient withdrawing, and the resume deleted the whole release with exit 0
    (re-probe 20 #10). Withdrawing everything is deleting OUTPUT, which needs no run."""
    if files:
        return
    if any(rec.output and rec.status != "withdrawn" for rec in _load_state(out).values()):
        raise InvalidInputError("INPUT holds no file, but OUTPUT holds a release made from it: not withdrawn",
                                path=src, hint="Check that INPUT is mounted and complete; to withdraw the whole "
                                "release, delete OUTPUT.")  # fmt: skip


def _withdraw(out: Path, rec: FileRecord, reason: str, current: set[str]) -> FileRecord:
    """Remove an earlier run's output whose input left the walk or changed (a release equals exactly the current
    input: a withdrawn patient's file must not stay released); the record says so, without any value."""
    if rec.output is not None and rec.output not in current:
        (out / rec.output).unlink(missing_ok=True)
    return FileRecord(rec.input_ref, rec.input_digest, "withdrawn", reason=reason)


def _check_output_place(out: Path) -> None:
    """OUTPUT must be a folder or a new name whose parents are folders: an existing file, a path under a file or a
    dangling link is a usage error (exit 2, one line), not an internal error (review 20 #10)."""
    if out.is_symlink() and not out.exists():
        raise UsageError("output is a link to nothing", path=out, hint="Remove the link or choose a new folder.")
    if out.exists() and not out.is_dir():
        raise UsageError("output exists and is not a folder", path=out, hint="Choose a new or empty folder.")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UsageError("output lies under a file", path=blocking, hint="Choose a folder path for OUTPUT.")
    if not out.exists():
        _require_creatable(out)


def _require_creatable(out: Path) -> None:
    """A new OUTPUT must be creatable in its nearest existing folder: /proc, a read-only or immutable folder is a
    usage error naming it (exit 2, one line), not an internal error (re-probe 20 #9). Tried with a folder made and
    removed at once, so that a refused run leaves nothing behind."""
    base = next(p for p in out.parents if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".medseg-deid-", dir=base))
    except OSError as exc:
        raise UsageError(f"output folder cannot be created there ({exc.strerror or type(exc).__name__})",
                         path=out, hint="Choose a folder you can write to.") from None  # fmt: skip


def _load_state(out: Path) -> dict[str, FileRecord]:
    """Records of files finished by earlier runs: the journal's lines (a later line wins), a cut line ignored."""
    state: dict[str, FileRecord] = {}
    journal = out / JOURNAL
    lines = journal.read_text(encoding="utf-8", errors="replace").splitlines() if journal.is_file() else []
    for line in lines:
        try:
            rec = FileRecord(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a damaged or cut record only costs re-processing that file
        state[rec.input_ref] = rec
    return state


def _record_json(rec: FileRecord) -> str:
    """One journal line (fields are plain values: no deep copy needed)."""
    return json.dumps(vars(rec), separators=(",", ":"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def input_digest(mapper: KeyedMapper, sha256_hex: str) -> str:
    """What the manifest and journal record of an input's content: HMAC-SHA256 of its SHA-256 under the run's
    secret. Equal inputs give equal digests in one run (resume works), but whoever holds an original cannot find
    its pseudonymised output in the records without the secret (a plain SHA-256 re-linked them)."""
    return "hmac-sha256:" + mapper.digest("input-sha256", sha256_hex).hex()


def _unique(rel: Path, ref: str, taken: dict[str, str]) -> Path:
    """`rel`, or rel with -2, -3... when another input already owns that name (inputs sharing a SOP UID)."""
    candidate, n = rel, 1
    while taken.get(candidate.as_posix(), ref) != ref:
        n += 1
        candidate = rel.with_name(f"{rel.stem}-{n}.dcm")
    taken[candidate.as_posix()] = ref
    return candidate


NameWords = dict[str, frozenset[str]]  # "study\0<uid>" or "patient\0<id>" -> words of that patient's names


@dataclass(frozen=True)
class InputHeaders:
    """What every worker needs to know of the whole input before the run: each study's patient issuer
    (`engine.study_issuers`) and the words of the patient's name per study and per patient ID, so a file of the
    study without PatientName (a SEG a tool wrote) is cleaned of that name too (review 20 #6)."""

    issuers: engine.Issuers = field(default_factory=dict)
    names: NameWords = field(default_factory=dict)

    def name_words(self, ds: object) -> frozenset[str]:
        """The name words of `ds`'s study and patient ID gathered over the whole input."""
        keys = [f"study\0{_text(ds, 'StudyInstanceUID')}", f"patient\0{_text(ds, 'PatientID')}"]
        return frozenset().union(*(self.names.get(k, frozenset()) for k in keys))


def _text(ds: object, keyword: str) -> str:
    return str(getattr(ds, "get", lambda *_: "")(keyword, "") or "").strip("\0 ")


@dataclass(frozen=True)
class _Job:
    """One input for a worker: its path, keyed reference and the record a previous run left for it."""

    path: Path
    ref: str
    old: FileRecord | None


@dataclass
class _Done:
    """A worker's answer: the record, and the encoded output waiting under `pending` for its final name."""

    record: FileRecord
    pending: Path | None = None
    name: Path | None = None


@dataclass(frozen=True)
class _Worker:
    """De-identifies one file into the pending folder; runs in a worker process (or in-process for one worker)."""

    out: Path
    secret: bytes
    settings: DeidSettings
    headers: InputHeaders = field(default_factory=InputHeaders)

    def __call__(self, job: _Job) -> _Done:
        data = job.path.read_bytes()
        digest = input_digest(KeyedMapper(self.secret), _sha256(data))
        old = job.old
        if old is not None and old.input_digest == digest and _output_intact(self.out, old):
            old.resumed = True
            return _Done(old)
        mapper = KeyedMapper(self.secret)
        rec, encoded, name = _one_file_safe(job.path, data, job.ref, digest, mapper, self.settings, self.headers)
        if encoded is None:
            return _Done(rec)
        pending = self.out / PENDING / f".tmp-{job.ref[12:44]}.dcm"
        pending.write_bytes(encoded)
        return _Done(rec, pending, name)


def _results(worker: _Worker, jobs: list[_Job], workers: int) -> Iterator[_Done]:
    """Each job's answer in input order, from a process pool when more than one worker is asked for."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(worker, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork is cheap for the header path; OCR (onnxruntime threads) needs a clean process: forkserver
    method = "forkserver" if worker.settings.scan_pixels else "fork"
    from medseg.deid.deathsig import PARENT_ENV, die_with_parent

    context = multiprocessing.get_context(method)
    initargs: tuple[int, ...] = (os.getpid(),) if method == "fork" else ()
    previous = os.environ.get(PARENT_ENV)
    if method == "forkserver":
        context.set_forkserver_preload(["__main__", "medseg.deid.deathsig_preload"])
        os.environ[PARENT_ENV] = str(os.getpid())  # read by the fork server as it starts; put back after the run
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=die_with_parent,
                               initargs=initargs)  # fmt: skip
    try:
        yield from pool.map(worker, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers))))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous


def _clear_pending(out: Path) -> None:
    """Remove encoded outputs that never got their final name (an interrupted or killed run)."""
    for leftover in (out / PENDING).glob(".tmp-*"):
        leftover.unlink(missing_ok=True)


def deidentify_tree(
    src: Path, out: Path, secret: bytes, settings: DeidSettings,
    on_file: Callable[[FileRecord], None] | None = None,
) -> RunResult:  # fmt: skip
    """De-identify every file under `src` into `out`; returns the records (manifest written to out).

    Durability: each output and state record is renamed into place complete (never half-written, even if the
    process is killed), and each finished file appends one line to the state journal; outputs are synced to disk
    once at the end of the run (and when it stops early), before the manifest is written; the journal is never
    synced. After a power loss before that sync
    an output or record may be incomplete or missing on disk; a re-run detects it (the record's output SHA-256
    no longer matches, or the record is unreadable) and redoes that file.
    """
    key_id = secret_id(secret)
    marker = f"{key_id} {','.join(sorted(settings.options)) or 'basic'} pixels={settings.scan_pixels}"
    _check_paths(src, out, marker)
    walk = discover(src)
    if settings.strict and not walk.files and not walk.skipped:
        raise InvalidInputError("no file in INPUT", path=src, hint="Pass the folder holding the DICOM files.")
    mapper = KeyedMapper(secret)
    identity = _input_identity(src, mapper)
    _check_input_identity(out, identity, (out / STATE_DIR / "key-id").is_file())
    _refuse_emptied_input(src, out, walk.files)
    (out / PENDING).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / STATE_DIR / "key-id", marker + "\n", overwrite=True)
    atomic_write_text(out / INPUT_ID, identity + "\n", overwrite=True)
    _clear_pending(out)
    state = {ref: rec for ref, rec in _load_state(out).items() if rec.status != "withdrawn"}
    taken = {r.output: r.input_ref for r in state.values() if r.output}

    def ref_of(path: Path) -> str:
        rel = path.relative_to(src).as_posix() if src.is_dir() else path.name
        return "hmac-sha256:" + mapper.digest("input-path", rel).hex()

    jobs = [_Job(path, ref_of(path), state.get(ref_of(path))) for path in walk.files]
    records = [FileRecord(ref_of(path), "", "skipped", reason=f"{why}: not read") for path, why in walk.skipped]
    if settings.strict and records:
        raise InvalidInputError(f"{records[0].reason} (input {records[0].input_ref[:24]}...)", path=src,
                                hint="Remove it, or run without --strict.")  # fmt: skip
    unsynced: list[Path] = []
    journal = (out / JOURNAL).open("a", encoding="utf-8")
    walked = {job.ref for job in jobs}
    try:
        for gone in [rec for ref, rec in state.items() if ref not in walked]:
            records.append(_withdraw(out, gone, "input no longer in INPUT: its output removed", set()))
            journal.write(_record_json(records[-1]) + "\n")
            taken.pop(gone.output or "", None)
        worker = _Worker(out, secret, settings, _input_headers(walk.files))
        for done in _results(worker, jobs, settings.workers):
            rec = done.record
            if done.pending is not None and done.name is not None:
                rel = _unique(done.name, rec.input_ref, taken)
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(done.pending, out / rel)
                rec.output = rel.as_posix()
                unsynced.append(out / rel)
            old = state.get(rec.input_ref)
            if old is not None and old.output and old.output != rec.output and not rec.resumed:
                changed = _withdraw(out, old, "input changed since the earlier run: its old output removed",
                                    {rec.output or ""})  # fmt: skip
                records.append(changed)
                taken.pop(old.output, None)
            if not rec.resumed:
                journal.write(_record_json(rec) + "\n")
                journal.flush()  # in the kernel now: a killed process loses at most a cut last line
            records.append(rec)
            if on_file is not None:
                on_file(rec)
            if settings.strict and rec.status == "skipped":
                raise InvalidInputError(f"{rec.reason} (input {rec.input_ref[:24]}...)", path=src,
                                        hint="Remove it, or run without --strict.")  # fmt: skip
    finally:
        journal.close()
        _clear_pending(out)
        sync_paths(unsynced)
    manifest = out / MANIFEST
    atomic_write_text(manifest, json.dumps(_manifest(records, key_id, settings), indent=1) + "\n", overwrite=True)
    return RunResult(records, manifest)


def _input_headers(files: list[Path]) -> InputHeaders:
    """`InputHeaders` over every input's header (study, patient ID, issuer and name only; unreadable files
    contribute nothing): read once before the run so every worker keys and cleans a study's patient the same way."""
    import pydicom

    headers, names = [], {}
    for path in files:
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, force=True, specific_tags=[*_ISSUER_KEYS, "PatientName"]
            )
            headers.append(tuple(_text(ds, k) for k in _ISSUER_KEYS))
            words = engine.name_words(str(ds.get("PatientName", "") or ""))
        except Exception:  # not DICOM, truncated: the run itself reports it
            continue
        for key in (f"study\0{headers[-1][0]}", f"patient\0{headers[-1][1]}"):
            if words and not key.endswith("\0"):
                names[key] = names.get(key, frozenset()) | words
    return InputHeaders(engine.study_issuers(headers), names)  # type: ignore[arg-type]


_ISSUER_KEYS = ("StudyInstanceUID", "PatientID", "IssuerOfPatientID")


def _output_intact(out: Path, rec: FileRecord) -> bool:
    if rec.output is None:
        return True
    target = out / rec.output
    return target.is_file() and _sha256(target.read_bytes()) == rec.output_sha256


Encoded = tuple[FileRecord, bytes | None, Path | None]


def _one_file_safe(
    path: Path, data: bytes, ref: str, digest: str, mapper: KeyedMapper, settings: DeidSettings,
    headers: InputHeaders | None = None,
) -> Encoded:  # fmt: skip
    """`_one_file`, with an unexpected fault recorded as status 'failed' (the run then exits 4) instead of lost; a
    fault on the raw copier's path is retried on the full path first."""
    try:
        with rawcopy.unchecked_reads() if settings.copy_raw else nullcontext():
            return _one_file(path, data, ref, digest, mapper, settings, headers)
    except (OSError, MedsegError):
        raise
    except Exception as exc:  # a fault on one odd file must not stop the others; it is reported and fails the run
        fault = exc
    if settings.copy_raw:
        try:
            return _one_file(path, data, ref, digest, mapper, replace(settings, copy_raw=False), headers)
        except (OSError, MedsegError):
            raise
        except Exception as exc:
            fault = exc
    reason = corrupt_element(data) or f"internal error {type(fault).__name__}: {str(fault)[:120]}"
    status = "skipped" if reason.startswith("unreadable") else "failed"
    return FileRecord(ref, digest, status, reason=reason), None, None


def _one_file(
    path: Path, data: bytes, ref: str, digest: str, mapper: KeyedMapper, settings: DeidSettings,
    headers: InputHeaders | None = None,
) -> Encoded:  # fmt: skip
    """Read, de-identify, scan pixels and encode one file; problems become the record's status and reason."""
    raw = rawcopy.parse(path, data) if settings.copy_raw else None
    try:
        ds = raw.dataset if raw is not None else read_input(path, data)
    except ReadProblem as problem:
        return FileRecord(ref, digest, problem.status, reason=problem.reason), None, None
    cleans_text = bool(settings.options & {"clean-descriptors", "clean-structured-content", "clean-graphics"})
    headers = headers or InputHeaders()
    words = engine.identifying_words(ds, all_names=cleans_text) | headers.name_words(ds)
    sequences = rawcopy.sequence if raw is not None else None
    key = engine.patient_key(ds, headers.issuers)
    ctx = engine.FileContext(
        mapper,
        settings.options,
        key,
        words,
        raw_sequence=sequences,
        raw_values=raw is not None,
        patient_words=engine.patient_words(ds),
        natural_names=engine.natural_names(ds),
    )
    original = engine.snapshot(ds)
    result = engine.deidentify(ds, ctx, in_place=True)
    result.file_meta = FileMetaDataset()  # the pixel decoder needs the original transfer syntax
    result.file_meta.TransferSyntaxUID = UID(source_transfer_syntax(original))
    pixels: PixelOutcome = scan_and_clean(result, settings.scan_pixels)
    overlays = clean_overlays(result, settings.scan_pixels) if "clean-graphics" in settings.options else None
    big_endian = source_transfer_syntax(original) == ExplicitVRBigEndian
    if clear_unused_bits(result, big_endian and not pixels.rewritten):
        ctx.actions["pixel bits outside BitsStored cleared"] += 1
    rewritten = pixels.rewritten or str(result.file_meta.TransferSyntaxUID) != source_transfer_syntax(original)
    if big_endian:
        convert_values(result)
    if big_endian and not pixels.rewritten:
        to_little_endian(result)
    elif big_endian:
        result.set_original_encoding(False, True, result.original_character_set)
    set_identity(result, original, ctx, pixels_cleaned=pixels.rewritten)
    rel = relative_name(result)
    status = "written"
    if pixels.status == "quarantine":
        rel, status = Path(QUARANTINE) / rel.name, "quarantined"
    copied = rawcopy.encode(result, original, raw) if raw is not None and not rewritten else None
    encoded = copied if copied is not None else encode_dataset(result, original, rewritten or big_endian)
    record = FileRecord(
        ref, digest, status, None, _sha256(encoded), pixels.reason, dict(sorted(ctx.actions.items())),
        {"status": pixels.status, "frames": pixels.frames, "regions": [list(r) for r in pixels.regions],
         **({"overlays": overlays.summary()} if overlays is not None and overlays.groups else {})},
    )  # fmt: skip
    return record, encoded, rel


def _manifest(records: list[FileRecord], key_id: str, settings: DeidSettings) -> dict[str, object]:
    from medseg import __version__
    from medseg.deid.table import load_table

    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {
        "tool": f"medseg {__version__}",
        "table": f"PS3.15 Table E.1-1 {load_table().edition}",
        "key_id": key_id,
        "options": sorted(settings.options),
        "pixels_scanned": settings.scan_pixels,
        "counts": counts,
        "files": [vars(r) for r in records],
    }
