"""One case end to end: load, check the input, segment, check the result, write outputs and summary.json.

Outputs go to `<out>/<case name>/`; every write is atomic, and existing outputs are refused up front (before any
work) unless `overwrite`. An input-refusal flag (MR for a CT model, a head scan, not HU) stops the case before the
model runs (exit code 5, only summary.json with the reasons) unless `force`, which is then recorded in summary.json
and the SEG's series description. Under `strict`, any other QC flag rejects the case (exit code 5): only
summary.json (and preview.png for result-stage flags) is written then, so the reason is on record. Library
warnings raised while a case runs become notes in its summary.json, never raw console output.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medseg import __version__
from medseg.digests import files_sha256
from medseg.errors import MedsegError, ProcessingError, QCRejectedError, UsageError
from medseg.infer.cases import Case
from medseg.infer.organs import parse_organs, renumber, select_organs
from medseg.infer.predict import Prediction, predict_labels
from medseg.infer.qc import (
    QCFlag,
    anchor_organ,
    check_anchor,
    check_confidence,
    check_input,
    check_result,
    confidence_limit,
    edge_evidence,
    rules_sha256,
)
from medseg.infer.runtime import LazyRunner, Runner
from medseg.io import Volume, write_nifti
from medseg.io.atomic import check_writable, commit_folder, staging_folder
from medseg.io.summary_schema import (
    CaseStatus,
    InputInfo,
    ModelGridInfo,
    ModelInfo,
    OrganStats,
    QCRecord,
    Settings,
    Software,
    acquisition_facts,
)
from medseg.models.card import ModelCard
from medseg.models.registry import InstalledModel
from medseg.parallel import ThreadSettingError, in_background, thread_cap
from medseg.postprocess import organ_stats
from medseg.signals import deferred_interrupt
from medseg.writers.preview import write_preview
from medseg.writers.seg import SegAlgorithm, SegUnavailable, prewarm_in_background, write_seg
from medseg.writers.summary import write_summary

OUTPUT_ORDER = ("labels", "seg", "preview")  # summary.json lists outputs in this order, whichever writer ends first


@dataclass(frozen=True)
class InferSettings:
    """What the user asked for (CLI options), independent of the input."""

    organ: str
    out_dir: Path
    fast: bool = False
    strict: bool = False
    overwrite: bool = False
    preview: bool = True
    force: bool = False
    organs: tuple[str, ...] = ()  # --organ liver,spleen (checked by infer.organs.select_organs); () = (organ,)

    def __post_init__(self) -> None:
        """Organ names normalised as `parse_organs` serves them ("Liver", " LIVER" -> "liver"): summary.json's
        `organ` keys post-market monitoring, where one study run twice must count once."""
        object.__setattr__(self, "organ", ",".join(parse_organs(self.organ)))
        organs = tuple(o.strip().lower() for o in self.organs) or parse_organs(self.organ)
        object.__setattr__(self, "organs", organs)

    @property
    def overlap(self) -> float:
        """Window overlap: MONAI's default 0.25, or none with --fast (fewer windows, seams less smoothed)."""
        return 0.0 if self.fast else 0.25


@dataclass
class CaseResult:
    """What happened to one case: its status, exit code, outputs and flags."""

    case: str
    status: CaseStatus
    exit_code: int
    outputs: list[Path] = field(default_factory=list)
    flags: list[QCFlag] = field(default_factory=list)
    message: str | None = None
    summary: dict[str, Any] | None = None
    traceback: str | None = None  # of an internal error, shown with --debug

    @property
    def forced(self) -> list[str]:
        """Input-refusal flags overridden with --force (empty when none)."""
        return list(((self.summary or {}).get("qc") or {}).get("forced") or [])


def output_names(model: InstalledModel, case: Case, organs: tuple[str, ...]) -> dict[str, str]:
    """File names written for a case; the label map is named after the organ when one organ is output, else
    labels.nii.gz (values 1..N = the organs in request order, listed in summary.json `organs`)."""
    served = select_organs(model.card, organs)  # refuses an organ without validation figures, whoever calls
    names = {"labels": f"{next(iter(served.values()))}.nii.gz" if len(served) == 1 else "labels.nii.gz"}
    if case.kind == "dicom":
        names["seg"] = "seg.dcm"
    for name in names.values():
        _check_plain_name(name, model)
    return names | {"preview": "preview.png", "summary": "summary.json"}


def _check_plain_name(name: str, model: InstalledModel) -> None:
    """ProcessingError (exit 4) for an output name that is not a plain file name in the case folder (a separator,
    `.` or `..`): a backstop behind the card's label-name rule, so no card can make medseg write outside --out."""
    stem = name.removesuffix(".nii.gz")
    if not stem or stem in {".", ".."} or name != Path(name).name or "/" in name or "\\" in name:
        raise ProcessingError(f"output name {name!r} from the model's labels is not a plain file name",
                              path=model.folder / model.card_file, hint="Fix or reinstall the model.")


def input_digest(volume: Volume, case: Case) -> str:
    """SHA-256 over the source files' bytes in slice order (DICOM) or of the file (NIfTI)."""
    return files_sha256(list(volume.meta.source_files) or [case.source])


def _describe_input(volume: Volume, case: Case, sha256: str) -> dict[str, Any]:
    """summary.json `input`, validated as `InputInfo` when made."""
    return _dump(InputInfo(
        path=str(case.source),
        format=case.kind,
        sha256=sha256,
        files=len(volume.meta.source_files) or 1,
        modality=volume.meta.modality,
        series_instance_uid=volume.meta.series_instance_uid,
        shape=list(volume.shape),
        spacing_mm=[round(s, 4) for s in volume.spacing],
        origin_lps_mm=[round(o, 3) for o in volume.geometry.origin],
        direction=[list(r) for r in volume.geometry.direction],
        acquisition=acquisition_facts(volume.meta.extra),
    ))  # fmt: skip


def _dump(record: BaseModel) -> dict[str, Any]:
    """A summary section made as its pydantic model (validated on construction), in its JSON form."""
    return record.model_dump(mode="json")


def _base_summary(
    model: InstalledModel, runner: Runner | LazyRunner, settings: InferSettings, case: Case
) -> dict[str, Any]:
    card = model.card
    return {
        "case": case.name,
        "organ": settings.organ,
        "software": _dump(Software(medseg=__version__, python=platform.python_version(), backend=runner.backend)),
        "model": _dump(ModelInfo(
            name=card.name,
            version=card.version,
            sha256=card.weights.sha256,
            card_sha256=model.card_sha256,
            spacing_mm=list(card.spacing),
            roi_size=list(card.roi_size),
            runtime=runner.info if not isinstance(runner, LazyRunner) or runner.loaded else None,
        )),
        "settings": _dump(Settings(
            fast=settings.fast, strict=settings.strict, force=settings.force, overlap=settings.overlap
        )),
    }  # fmt: skip


def _qc(flags: list[QCFlag], settings: InferSettings, card: ModelCard) -> dict[str, Any]:
    """summary.json `qc`: the flags, what was refused or forced, and which rules applied (file digest, limit)."""
    refused = [f.code for f in flags if f.refuses]
    limit, source = confidence_limit(card)
    return _dump(QCRecord(
        passed=not flags,
        rules_sha256=rules_sha256(),
        low_confidence_limit=limit,
        low_confidence_limit_from=source,
        strict=settings.strict,
        refused=[] if settings.force else refused,
        forced=refused if settings.force else [],
        flags=[f.to_json() for f in flags],
    ))  # fmt: skip


def _qc_error(flags: list[QCFlag], where: Path, refused: bool) -> QCRejectedError:
    """The exit-5 error of a refused input (without --force) or of a --strict rejection, naming each flag."""
    what = "input refused, not what the model is for" if refused else "QC rejected under --strict"
    hint = (
        "See summary.json; rerun with --force to segment it anyway (recorded in the summary, SEG and audit)."
        if refused
        else "See summary.json; rerun without --strict to segment anyway."
    )
    reasons = "; ".join(f"{f.code} ({f.reason})" for f in flags)
    return QCRejectedError(f"{what}: {reasons}", flags=[f.code for f in flags], path=where, hint=hint)


def _warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Library warnings as one short note each (deduplicated): never raw on the console."""
    notes = []
    for w in caught:
        first = (str(w.message).strip().splitlines() or [""])[0]
        source = Path(w.filename).parts[-2] if len(Path(w.filename).parts) > 1 else w.filename
        notes.append(f"library warning ({source}, {w.category.__name__}): {first[:200]}")
    return list(dict.fromkeys(notes))


def _announce(flags: list[QCFlag], on_flag: Callable[[QCFlag], None] | None) -> None:
    if on_flag is not None:
        for f in flags:
            on_flag(f)


@dataclass
class _CaseRun:
    """The state of one case while it runs: where it writes, what it has measured, and the summary being built."""

    case: Case
    model: InstalledModel
    settings: InferSettings
    summary: dict[str, Any]
    folder: Path
    names: dict[str, str]
    start: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str | None] = field(default_factory=dict)
    caught: list[warnings.WarningMessage] = field(default_factory=list)
    volume: Volume | None = None
    digest: Future[str] | None = None  # input_digest, computed on a helper thread

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Record the wall time of the enclosed block under `stage` in summary.json's timings."""
        t = time.perf_counter()
        yield
        self.timings[stage] = time.perf_counter() - t

    def write_summary(self, status: CaseStatus, flags: list[QCFlag]) -> list[Path]:
        """Write summary.json last (with the total time) and return every file this case wrote."""
        if self.digest is not None and self.volume is not None:
            with self.timed("input_digest"):  # the wait for the helper thread, usually done long before
                self.summary["input"] = _describe_input(self.volume, self.case, self.digest.result())
        outputs = {k: self.outputs[k] for k in OUTPUT_ORDER if k in self.outputs} | self.outputs
        qc = _qc(flags, self.settings, self.model.card) | ({"passed": False} if status == CaseStatus.FAILED else {})
        self.summary |= {"status": status, "qc": qc, "outputs": outputs}
        notes = [*self.summary.get("notes", []), *_warning_notes(self.caught)]
        self.summary["notes"] = list(dict.fromkeys(notes))
        total = round(time.perf_counter() - self.start, 3)
        self.summary["timings_s"] = {k: round(v, 3) for k, v in self.timings.items()} | {"total": total}
        write_summary(self.summary, self.folder / self.names["summary"], self.settings.overwrite)
        return [self.folder / n for n in self.outputs.values() if n] + [self.folder / self.names["summary"]]

    def write_preview(self, volume: Volume, pred: Prediction, caption: str) -> None:
        with self.timed("write_preview"):
            path = self.folder / self.names["preview"]
            write_preview(volume, pred.labels, path, self.settings.overwrite, caption, within=pred.box)
            self.outputs["preview"] = self.names["preview"]


def check_outputs(case: Case, model: InstalledModel, settings: InferSettings) -> tuple[Path, dict[str, str]]:
    """The case's output folder and file names; UsageError (exit 2) when one exists without --overwrite, when --out
    or the case folder is a file, or when `MEDSEG_THREADS` is not a number of threads. Called for every case before
    any is run, and again by `run_case`."""
    check_thread_setting()
    check_out_folder(settings.out_dir)
    final = settings.out_dir / case.name
    names = output_names(model, case, settings.organs)
    if final.is_symlink():
        raise UsageError("the case's output folder is a symbolic link: medseg replaces its folder whole, not what a "
                         "link points to", path=final, hint="Choose another --out.")  # fmt: skip
    if final.exists() and not final.is_dir():
        raise UsageError("the case's output folder is a file", path=final, hint="Choose another --out.")
    source = Path(case.source).resolve()
    if final.resolve() == source or final.resolve() in source.parents:
        raise UsageError("the case's output folder would be its input folder (or hold it): outputs would be mixed "
                         "with the input and replace its files", path=final,
                         hint="Choose an --out that is not the input's folder or one above it.")  # fmt: skip
    replaceable = _only_a_failure(final)  # the record of a failed run is no result: a rerun replaces it
    for name in names.values():
        check_writable(final / name, settings.overwrite or replaceable)
    if final.is_dir() and _listed_outputs(final) is None:
        for name in sorted(set(FIXED_OUTPUTS) - set(names.values())):
            check_writable(final / name, settings.overwrite)
        _refuse_unidentified(final, names, model.card)
    return final, names


FIXED_OUTPUTS = ("labels.nii.gz", "seg.dcm", "preview.png")
"""Output names only medseg writes in a case folder: removed by --overwrite even when no summary.json lists them."""


def _listed_outputs(folder: Path) -> set[str] | None:
    """The plain file names the case folder's summary.json lists as its outputs; None when that summary is missing
    or unreadable (then which files are an earlier result's is not recorded)."""
    try:
        listed = json.loads((folder / "summary.json").read_text()).get("outputs")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(listed, dict):
        return None
    values = [v for value in listed.values() for v in (value if isinstance(value, list) else [value])]
    return {n for n in values if isinstance(n, str) and n and n == Path(n).name}


def _refuse_unidentified(final: Path, names: dict[str, str], card: ModelCard) -> None:
    """UsageError (exit 2) when a case folder without a readable summary.json holds `<organ>.nii.gz` files of the
    card's organs that this run does not write: they may be an earlier result (kept, a reader would take them as
    this run's) or the reader's own (never deleted), and nothing records which."""
    ours = set(names.values())
    found = sorted(n for o in card.foreground_labels.values()
                   if (n := f"{o}.nii.gz") not in ours and (final / n).exists())  # fmt: skip
    if found:
        raise UsageError(f"the case folder's summary.json is missing or unreadable, so medseg cannot tell whether "
                         f"{', '.join(found)} is an earlier result or your own file", path=final,
                         hint="Move or remove those files (or choose another --out), then rerun.")  # fmt: skip


def check_out_folder(out_dir: Path) -> None:
    """UsageError (exit 2) when --out, or the nearest part of it that exists, is not a folder (a file, or a dangling
    symbolic link, named as such): found before any work, not as "cannot write output: File exists" (exit 4) after
    the model ran."""
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists() or p.is_symlink()), None)
    if existing is not None and not existing.is_dir():
        what = "--out" if existing == out_dir else f"{existing}, a folder above --out,"
        kind = "a symbolic link to nothing" if not existing.exists() else "a file, not a folder"
        raise UsageError(f"{what} is {kind}", path=out_dir, hint="Choose another --out.")


def check_thread_setting() -> None:
    """UsageError (exit 2) when `MEDSEG_THREADS` is set to anything but a whole number of at least 1: found before
    any case runs, not as an internal error of the first case after its model ran."""
    try:
        thread_cap()
    except ThreadSettingError as exc:
        raise UsageError(str(exc)) from exc


def check_distinct_folders(cases: list[Case], out_dir: Path) -> None:
    """UsageError (exit 2), before any work, when two cases would write into one output folder: one study's results
    would replace another's (with --overwrite) or fail after the work (without)."""
    owners: dict[str, Case] = {}
    for case in cases:
        other = owners.setdefault(case.name, case)
        if other is not case:
            raise UsageError(
                f"two inputs would write into one case folder: {other.source} and {case.source}",
                path=out_dir / case.name,
                hint="Rename one of the inputs or segment them into different --out folders.",
            )


def _only_a_failure(final: Path) -> bool:
    """Whether the case folder holds no result, only the record of a run that gave none: the summary.json of a
    failed run, or of a refusal or --strict rejection (`qc_rejected`, with the preview it may keep). A rerun (the
    refusal's own hint: "rerun with --force") replaces it without --overwrite."""
    try:
        status = json.loads((final / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return False
    kept = {"summary.json"} | ({"preview.png"} if status == CaseStatus.QC_REJECTED else set())
    results = {"labels.nii.gz", "seg.dcm", "preview.png"}
    return status in (CaseStatus.FAILED, CaseStatus.QC_REJECTED) and not any(
        p.name in results or p.name.endswith(".nii.gz") for p in final.iterdir() if p.name not in kept
    )


def run_case(
    case: Case,
    model: InstalledModel,
    runner: Runner | LazyRunner,
    settings: InferSettings,
    progress: Callable[[int, int], None] | None = None,
    on_flag: Callable[[QCFlag], None] | None = None,
) -> CaseResult:
    """Segment one case and write its outputs; raises MedsegError on failure. A refused input (without --force)
    or a flagged one under --strict returns a qc_rejected result (exit code 5) with only summary.json written.
    The outputs are written into a staging folder and moved into the case folder together (`commit_folder`): an
    --overwrite run leaves none of an earlier run's outputs beside its own, a failed one leaves them untouched."""
    final, names = check_outputs(case, model, settings)
    stage: Path | None = None
    try:
        with deferred_interrupt():  # Ctrl-C right after the folder is made must still find it to remove it
            stage = staging_folder(final)
        run = _CaseRun(case, model, settings, _base_summary(model, runner, settings, case), stage, names)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.caught = caught
            try:
                result = _run_checked(run, runner, progress, on_flag)
            except MedsegError as exc:
                _name_final_path(exc, stage, final)
                _record_failure(run, final, exc)
                raise
            except Exception as exc:  # re-raised as it is: the CLI reports an internal error (exit 4, --debug)
                _record_failure(run, final, internal_error(case, exc))
                raise
        commit_folder(stage, final, _earlier_outputs(final) - {p.name for p in result.outputs})
    except BaseException:  # the case folder keeps its earlier outputs, untouched, whatever failed
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    result.outputs = [final / p.name for p in result.outputs]
    return result


def _name_final_path(exc: MedsegError, stage: Path, final: Path) -> None:
    """An error about a file in the staging folder names that file's place in the case folder instead
    (`out/dicom/seg.dcm`, not `out/.tmp-dicom-XXXX/seg.dcm`): the staging folder is removed before the user reads
    the error or summary.json's `failure`."""
    if exc.path is not None and exc.path.is_relative_to(stage):
        exc.path = final / exc.path.relative_to(stage)


def internal_error(case: Case, exc: BaseException) -> ProcessingError:
    """An unexpected failure (MemoryError, a bug) as the one-line ProcessingError (exit 4) a failed case's
    summary.json records, worded as the CLI reports an internal error, so monitoring counts the case too."""
    detail = " ".join(str(exc).split())
    return ProcessingError(f"internal error: {type(exc).__name__}" + (f": {detail}" if detail else ""),
                           path=case.source, hint="Rerun with --debug and report it")  # fmt: skip


def _record_failure(run: _CaseRun, final: Path, exc: MedsegError) -> None:
    """A failed case gets a summary.json with status "failed" and the error, so post-market monitoring counts it;
    only where no earlier result exists (an --overwrite run that fails leaves the earlier one as it was): a new or
    empty case folder, or one holding only an earlier failure's record (replaced: the latest failure counts). Best
    effort: the case's own error is what the caller reports."""
    if final.exists() and not (_only_a_failure(final) or not any(final.iterdir())):
        return
    try:
        for leftover in run.folder.iterdir():
            leftover.unlink()
        run.outputs.clear()
        run.summary |= {"failure": exc.one_line(), "exit_code": exc.exit_code}
        run.write_summary(CaseStatus.FAILED, [])
        commit_folder(run.folder, final, set())
    except Exception:  # best effort (memory may be short): the case's own error is what is reported
        return


def _earlier_outputs(folder: Path) -> set[str]:
    """Names of an earlier run's outputs in a case folder: its summary.json and the files that summary lists, so an
    --overwrite run never leaves an earlier result (another patient's SEG) while the reader's own files, whatever
    their names (a manual stomach.nii.gz beside the result), are left alone. Without a readable summary, medseg's
    fixed output names (`check_outputs` has refused the per-organ ones it cannot attribute)."""
    listed = _listed_outputs(folder)
    return {"summary.json"} | (set(FIXED_OUTPUTS) if listed is None else listed)


def _run_checked(
    run: _CaseRun,
    runner: Runner | LazyRunner,
    progress: Callable[[int, int], None] | None,
    on_flag: Callable[[QCFlag], None] | None,
) -> CaseResult:
    """Load, input QC (refusal, then --strict), predict, result QC, write: the body of `run_case`."""
    case, card, settings = run.case, run.model.card, run.settings
    with run.timed("load"):
        volume = case.load()
    run.summary["input"] = None  # filled in by write_summary, from `run.digest`, in this place
    run.volume, run.digest = volume, in_background(input_digest, volume, case)  # hashing beside the model
    run.summary["notes"] = list(dict.fromkeys([*case.notes, *volume.meta.notes]))
    with run.timed("qc_input"):
        flags = check_input(volume, card)
    _announce(flags, on_flag)
    refusals = [f for f in flags if f.refuses]
    if refusals and not settings.force:
        return _finish_rejected(run, flags, None, volume, _qc_error(refusals, case.source, refused=True))
    if settings.strict and _blocking(flags, settings):
        return _finish_rejected(run, flags, None, volume)

    served = select_organs(card, settings.organs)
    if case.kind == "dicom":
        prewarm_in_background()
    with run.timed("load_model"):  # the first case of a process pays the runtime's import and model load
        batch_size = runner.batch_size
    anchor = anchor_organ(card, settings.organs)
    classes = tuple(served) + ((anchor,) if anchor is not None and anchor not in served else ())
    pred = predict_labels(volume, card, runner, batch_size, settings.overlap, progress, case.prepared(),
                          classes)  # fmt: skip
    anchor_flags = _anchor_flags(pred, volume, anchor, settings.organs[0], card.modality == "CT")
    run.summary["software"]["backend"] = runner.backend
    run.summary["model"]["runtime"] = runner.info
    if runner.info.get("precision") == "int8":
        run.summary["model"]["int8_sha256"] = run.model.int8_sha256
    run.timings.update(pred.timings)
    run.summary["model_grid"] = _dump(ModelGridInfo(shape=list(pred.grid.shape), windows=vars(pred.windows)))
    pred.labels, served = renumber(pred.labels, served, pred.box)
    with run.timed("qc_result"):
        organs = [_organ_record(name, label, pred, volume) for label, name in served.items()]
        direction = volume.geometry.direction_matrix
        result_flags = [
            f
            for o in organs
            for f in check_result(o["name"], o, volume.shape, card, direction,
                                  edge_evidence(volume, pred.labels, o["label"], o["bbox_index"]), o is organs[0],
                                  spacing=volume.spacing)
        ]  # fmt: skip
        result_flags += [
            f for o in organs if "confidence" in o for f in check_confidence(o["name"], o["confidence"], card)
        ]
        result_flags = anchor_flags + result_flags
    _announce(result_flags, on_flag)
    flags += result_flags
    run.summary["organs"] = organs
    refusals = [f for f in result_flags if f.refuses]
    if refusals and not settings.force:  # the scan does not show the organ: no label map or SEG served
        return _finish_rejected(run, flags, pred, volume, _qc_error(refusals, case.source, refused=True))
    if settings.strict and _blocking(flags, settings):
        return _finish_rejected(run, flags, pred, volume)
    return _finish(run, flags, pred, volume)


def _anchor_flags(pred: Prediction, volume: Volume, anchor: int | None, organ: str, hu: bool) -> list[QCFlag]:
    """The anchor check (`qc.check_anchor`) on the label map before `renumber` drops the anchor organ: predicted
    beside the requested organs in the same run, so the network runs once. It gets the anchor's whole stats and the
    grid, so the rules for a small liver (fat HU, away from the scan's superior end) apply to `--organ spleen` as to
    `--organ liver` (a pelvis scan served a 147-291 ml "spleen" beside a 12.8 ml "liver")."""
    if anchor is None:
        return []
    stats = organ_stats(pred.labels, anchor, volume, pred.box) | {"spacing": volume.spacing}
    return check_anchor(stats, organ, volume.shape, volume.geometry.direction_matrix, hu)


def _organ_record(name: str, label: int, pred: Prediction, volume: Volume) -> dict[str, Any]:
    """One organ's summary record, validated as `OrganStats` when it is made (not only when summary.json is written).
    An organ not found has no confidence: a fraction of no volume means nothing (it read 513 % beside
    organ_not_found)."""
    stats = organ_stats(pred.labels, label, volume, pred.box)
    found = stats["voxel_count"] > 0 and name in pred.confidence
    extra = {"confidence": pred.confidence[name].to_json()} if found else {}
    record = OrganStats(name=name, **stats, **extra)
    return record.model_dump(mode="json", exclude_unset=True)


def _blocking(flags: list[QCFlag], settings: InferSettings) -> list[QCFlag]:
    """The flags --strict rejects on: all but the input-refusal flags the user overrode with --force."""
    return [f for f in flags if not (f.refuses and settings.force)]


def forced_note(flags: list[QCFlag], settings: InferSettings) -> str | None:
    """'FORCED modality,body_part' when --force overrode input-refusal flags, else None."""
    forced = [f.code for f in flags if f.refuses] if settings.force else []
    return f"FORCED {','.join(forced)}" if forced else None


def _finish(run: _CaseRun, flags: list[QCFlag], pred: Prediction, volume: Volume) -> CaseResult:
    """Write every output, then summary.json; on any failure remove what this case wrote and re-raise."""
    status = CaseStatus.FLAGGED if flags else CaseStatus.OK
    try:
        _write_outputs(run, pred, volume, flags)
        paths = run.write_summary(status, flags)
    except BaseException:  # no half result sets: a case has all its outputs and summary.json, or none
        for name in run.outputs.values():
            if name:
                (run.folder / name).unlink(missing_ok=True)
        raise
    return CaseResult(run.case.name, status, 0, paths, flags, None, run.summary)


def _caption(summary: dict[str, Any], flags: list[QCFlag]) -> str:
    """The preview's caption: case, organ volumes with their uncertain fraction, model, QC flags (each result flag
    with its organ). `render_preview` wraps it to the sheet's width."""
    organs = ", ".join(
        f"{o['name']} {o['volume_ml']:.0f} ml"
        + (f" (uncertain {o['confidence']['uncertain_fraction']:.2f})" if o.get("confidence") else "")
        for o in summary.get("organs", [])
    )
    model = summary["model"]
    text = f"{summary['case']}: {organs or 'no organ'} | {model['name']} {model['version']}"
    return text + (f" | QC flags: {', '.join(f.label for f in flags)}" if flags else "")


def _write_outputs(run: _CaseRun, pred: Prediction, volume: Volume, flags: list[QCFlag]) -> None:
    """Write label map, SEG and preview, recording each in `run.outputs` as soon as it exists.

    The label map and the preview (numpy, compression and PNG encoding, mostly outside the GIL) are written by a
    helper thread while this thread builds the SEG (highdicom and pydicom, Python): on two cores about 0.2 s less
    per study. Both are always waited for; the first error is raised, and `_finish` removes whatever was written."""
    with ThreadPoolExecutor(1, thread_name_prefix="medseg-writer") as pool:
        side = pool.submit(_write_labels_and_preview, run, pred, volume, flags)
        try:
            _write_seg_output(run, pred, volume, flags)
        finally:
            side_error = side.exception()
    if side_error is not None:
        raise side_error


def _write_labels_and_preview(run: _CaseRun, pred: Prediction, volume: Volume, flags: list[QCFlag]) -> None:
    with run.timed("write_labels"):
        write_nifti(volume.with_array(pred.labels), run.folder / run.names["labels"], overwrite=run.settings.overwrite)
        run.outputs["labels"] = run.names["labels"]
    if run.settings.preview:
        run.write_preview(volume, pred, _caption(run.summary, flags))


def _write_seg_output(run: _CaseRun, pred: Prediction, volume: Volume, flags: list[QCFlag]) -> None:
    """The DICOM SEG (DICOM input only); a source highdicom cannot encode is recorded, not raised."""
    if "seg" not in run.names:
        return
    card = run.model.card
    algorithm = SegAlgorithm(card.name, card.version, f"medseg {__version__}")
    note = forced_note(flags, run.settings)
    with run.timed("write_seg"):
        try:
            seg_notes: list[str] = []
            served = {o["label"]: o["name"] for o in run.summary["organs"]}
            write_seg(pred.labels, volume, served, algorithm, run.folder / run.names["seg"], run.settings.overwrite,
                      series_note=note, notes=seg_notes)  # fmt: skip
            run.outputs["seg"] = run.names["seg"]
            run.summary["notes"] = [*run.summary.get("notes", []), *seg_notes]
        except SegUnavailable as exc:
            run.outputs["seg"] = None
            run.summary["seg_not_written"] = exc.message


def _finish_rejected(
    run: _CaseRun,
    flags: list[QCFlag],
    pred: Prediction | None,
    volume: Volume,
    error: QCRejectedError | None = None,
) -> CaseResult:
    """Record a refusal or --strict rejection: summary.json (and the preview when there is a result), no
    segmentation."""
    error = error or _qc_error(_blocking(flags, run.settings), run.case.source, refused=False)
    if pred is not None and run.settings.preview:
        caption = _caption(run.summary, []) + " | REJECTED: " + ", ".join(f.label for f in flags)
        run.write_preview(volume, pred, caption)
    paths = run.write_summary(CaseStatus.QC_REJECTED, flags)
    status = CaseStatus.QC_REJECTED
    return CaseResult(run.case.name, status, error.exit_code, paths, flags, error.one_line(), run.summary)


def run_case_safe(
    case: Case,
    model: InstalledModel,
    runner: Runner | LazyRunner,
    settings: InferSettings,
    progress: Callable[[int, int], None] | None = None,
    on_flag: Callable[[QCFlag], None] | None = None,
) -> CaseResult:
    """`run_case`, with any failure turned into a failed CaseResult so the next case can run."""
    try:
        return run_case(case, model, runner, settings, progress, on_flag)
    except MedsegError as exc:
        trace = traceback.format_exc()
        return CaseResult(case.name, CaseStatus.FAILED, exc.exit_code, message=exc.one_line(), traceback=trace)
    except Exception as exc:  # one case's internal fault must not stop the others; --debug shows the traceback
        message = internal_error(case, exc).one_line()
        return CaseResult(case.name, CaseStatus.FAILED, 4, message=message, traceback=traceback.format_exc())


def run_cases(
    cases: list[Case], model: InstalledModel, runner: Runner | LazyRunner, settings: InferSettings
) -> list[CaseResult]:
    """Run every case; one failing does not stop the others."""
    return [run_case_safe(case, model, runner, settings) for case in cases]


def exit_code(results: list[CaseResult]) -> int:
    """The run's exit code: 0 when every case succeeded (flags allowed), else the highest case exit code."""
    return max((r.exit_code for r in results), default=0)
