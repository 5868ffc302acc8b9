"""`medseg infer INPUT --organ liver`: segment a DICOM study, a NIfTI file, or a folder of them."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medseg.cli import state
from medseg.cli.state import console

if TYPE_CHECKING:
    from medseg.audit.session import AuditRecorder
    from medseg.errors import MedsegError
    from medseg.infer.pipeline import CaseResult
    from medseg.infer.runtime import LazyRunner, Runner
    from medseg.models.card import ModelCard
    from medseg.models.registry import InstalledModel

EXAMPLES = """
Examples:

  medseg infer study/ --organ liver --out results/

  medseg infer ct.nii.gz --organ liver --strict

  medseg infer study/ --organ liver,spleen --model multi_organ_folder   # labels.nii.gz 1 liver 2 spleen, 2 segments

  medseg infer studies/ --out results/ --model path/to/model_folder --overwrite

  medseg infer study/ --series 1.2.840.113619.2.55.3.604688119.971   # a series `medseg series study/` lists

  medseg infer mr_study/ --organ liver --force    # segment an input refused as not what the model is for

Outputs per series in OUT/<case>/: liver.nii.gz (one organ; several: labels.nii.gz, values 1..N in --organ
order), seg.dcm (DICOM input, one segment per organ), summary.json, preview.png.
Exit codes: 0 ok (QC flags allowed), 2 usage, 3 invalid input, 4 processing failure, 5 input refused (modality,
body_part, not_hu, not_a_volume; --force overrides) or QC rejection (--strict).
"""


def _rerun_hint(refused: list[CaseResult], sources: dict[str, Path], out: Path) -> str:
    """A batch's hint for refused cases: rerun each alone with --force (that replaces its refusal record); --force
    on the whole folder stops at the outputs of the cases already served ('output already exists', exit 2)."""
    first = refused[0].case
    return (f"Rerun a refused case alone with --force, e.g. `medseg infer {sources.get(first, first)} --out {out} "
            f"--force` (refused: {', '.join(r.case for r in refused)}); --force on the whole folder stops at the "
            "served cases' outputs. See each case's summary.json.")  # fmt: skip


def _batch_error(
    results: list[CaseResult], code: int, sources: dict[str, Path] | None = None, out: Path | None = None
) -> MedsegError:
    """The run's error: the case's own message for a single case, else a count with the first failure; for refused
    cases of a batch, a hint naming the case to rerun alone with --force (`_rerun_hint`)."""
    from medseg.errors import InvalidInputError, ProcessingError, QCRejectedError, UsageError

    bad = [r for r in results if r.exit_code == code]
    first = (bad[0].message or bad[0].status).rstrip(".")
    kind = {2: UsageError, 3: InvalidInputError, 5: QCRejectedError}.get(code, ProcessingError)
    if len(results) == 1:
        return kind(first)
    what = "rejected" if code == 5 else "failed"
    refused = [r for r in bad if code == 5 and "--force" in (r.message or "")]
    hint = "See each case's summary.json and the messages above."
    if refused and out is not None:
        hint = _rerun_hint(refused, sources or {}, out)
    return kind(f"{len(bad)} of {len(results)} case(s) {what}; first: {bad[0].case}: {first}", hint=hint)


def register(app: typer.Typer) -> None:
    """Add the `infer` subcommand to the app."""

    @app.command("infer", epilog=EXAMPLES)
    def infer(
        input: Path = typer.Argument(..., help="DICOM study folder, NIfTI file, or a folder of studies/NIfTI files."),
        organ: str = typer.Option(
            "liver",
            "--organ",
            help="Organ(s) to segment, comma-separated (liver,spleen): only those the model's "
            "card validates; the first chooses the default model.",
        ),
        out: Path = typer.Option(Path("medseg-out"), "--out", "-o", help="Output folder (one subfolder per series)."),
        model: str | None = typer.Option(None, "--model", help="Installed model name or model folder."),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
        backend: str = typer.Option("auto", "--backend", help="auto (OpenVINO on CPU), openvino, onnxruntime, torch."),
        precision: str = typer.Option("f32", "--precision", help="f32, or int8 (the model's validated INT8 export)."),
        fast: bool = typer.Option(False, "--fast", help="No window overlap: fewer windows, seams less smoothed."),
        strict: bool = typer.Option(False, "--strict", help="Reject (exit 5) on any QC flag."),
        force: bool = typer.Option(
            False, "--force", help="Segment an input refused as not what the model is for (recorded everywhere)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
        preview: bool = typer.Option(True, "--preview/--no-preview", help="Write preview.png."),
        series: str | None = typer.Option(
            None, "--series", help="Segment this series of a DICOM study folder (a key from `medseg series`, or its "
            "SeriesInstanceUID) instead of the one chosen automatically.",
        ),
    ) -> None:
        """Segment an organ in CT: QC, sliding-window inference, label map, DICOM SEG, summary and preview."""
        from medseg.cli.audited import audited, series_param
        from medseg.errors import UsageError

        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise UsageError(f"unknown device {device!r}", hint="Use --device cpu or --device cuda.")
        params = {"organ": organ, "device": device, "backend": backend, "precision": precision}
        params |= {"fast": fast, "strict": strict, "force": force, "series": series_param(series)}
        with audited("infer", params=params | {"overwrite": overwrite, "model": model}) as rec:
            options = InferOptions(fast, strict, overwrite, preview, force, precision, series)
            folders = _run(rec, input, organ, out, model, device, backend, options)
        state.fast_exit.append(state.FastExit(folders))  # success, audit end record written: see cli.main


@dataclass(frozen=True)
class InferOptions:
    """The switches of `medseg infer` (passed on to InferSettings)."""

    fast: bool
    strict: bool
    overwrite: bool
    preview: bool
    force: bool
    precision: str = "f32"
    series: str | None = None


def _lazy_runner(model: InstalledModel, backend: str, device: str, precision: str = "f32") -> LazyRunner:
    """The runtime, loaded when the first case reaches the model; library warnings become one line each."""
    from medseg.infer.runtime import LazyRunner, load_runner

    def load() -> Runner:
        console.info(f"model {model.card.name} {model.card.version}; loading the {backend} runtime on {device}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner = load_runner(model, backend, device, precision=precision)
        for line in dict.fromkeys(f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}" for w in caught):
            console.warn(f"while loading the model: {line}")
        if runner.info.get("exported_now"):
            console.info(f"exported the model to {runner.backend} once (cached in {runner.info['cache']})")
        if "fallback" in runner.info:
            console.warn(runner.info["fallback"])
        return runner

    return LazyRunner(load, backend)


def _rules_params(card: ModelCard) -> dict[str, Any]:
    """The audit params naming the QC rules applied: the rules file's digest and the low_confidence limit used."""
    from medseg.infer.qc import confidence_limit, rules_sha256

    limit, source = confidence_limit(card)
    return {"qc_rules_sha256": rules_sha256(), "low_confidence_limit": limit, "low_confidence_limit_from": source}


def _run(
    rec: AuditRecorder,
    input: Path,
    organ: str,
    out: Path,
    model_name: str | None,
    device: str,
    backend: str,
    options: InferOptions,
) -> list[Path]:
    """Run every case; returns the folders written to (for the fast exit's fsync)."""
    from medseg.infer.batch import Prefetcher, progress_for
    from medseg.infer.cases import discover_cases
    from medseg.infer.organs import parse_organs, select_organs
    from medseg.infer.pipeline import (
        InferSettings,
        check_distinct_folders,
        check_outputs,
        exit_code,
        output_names,
        run_case_safe,
    )
    from medseg.infer.runtime import BACKENDS, check_device, check_precision
    from medseg.models.registry import resolve_model

    organs = parse_organs(organ)
    model = resolve_model(model_name, organs[0])
    card = model.card
    select_organs(card, organs)
    if backend not in BACKENDS:
        from medseg.errors import UsageError

        raise UsageError(f"unknown backend {backend!r}", hint=f"Choose one of {', '.join(BACKENDS)}.")
    check_precision(model, backend, device, options.precision)
    check_device(device)
    rec.add_inputs([input, model.weights_path], background=True)  # read only; hashed beside the work
    rec.set_model(card.name, card.version, card.weights.sha256)
    rec.params["card_sha256"] = model.card_sha256
    rec.params |= _rules_params(card)
    if options.precision == "int8":
        rec.params["int8_sha256"] = model.int8_sha256
    model.verify()
    cases, notes = discover_cases(input, card.modality, options.series, out=out)
    for note in notes:
        console.warn(note)  # what was not read (skipped series, files): a warning, shown under --quiet too
    runner = _lazy_runner(model, backend, device, options.precision)
    settings = InferSettings(",".join(organs), out, fast=options.fast, strict=options.strict,
                             overwrite=options.overwrite, preview=options.preview, force=options.force,
                             organs=organs)  # fmt: skip
    check_distinct_folders(cases, out)
    for case in cases:  # an existing output stops the run before any work, not after the cases before it
        check_outputs(case, model, settings)
    results = []
    prefetcher = Prefetcher(cases, card) if len(cases) > 1 else None  # read case n+1 while case n runs
    try:
        for n, case in prefetcher or enumerate(cases):
            names = output_names(model, case, settings.organs).values()
            rec.will_write([out / case.name / name for name in names])  # recorded even if Ctrl-C cuts the case short
            label = f"[{n + 1}/{len(cases)}] {case.name}" if len(cases) > 1 else case.name
            with console.progress(f"{label}: segmenting", total=None) as advance:
                progress = lambda done, total, a=advance: a(1, windows=f"{done}/{total}")  # noqa: E731
                result = run_case_safe(
                    case,
                    model,
                    runner,
                    settings,
                    progress=progress_for(prefetcher, n, progress) if prefetcher else progress,
                    on_flag=lambda f, c=case.name: console.warn(f"{c}: QC flag {f.code}: {f.reason}"),
                )
            results.append(result)
            written = [p for p in result.outputs if p.is_file()]
            rec.will_write(written)  # recorded by the end event even if Ctrl-C cuts the digests below short
            rec.add_outputs(written)
            if prefetcher:
                prefetcher.settle(n)  # after the record: waiting for the next case's read must not hold it back
            _report(result, len(cases) == 1)
    finally:
        if prefetcher:
            prefetcher.close()
    if len(results) > 1:
        counts = {s: sum(r.status == s for r in results) for s in ("ok", "flagged", "qc_rejected", "failed")}
        console.result("summary: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f" of {len(results)}")
    code = exit_code(results)
    flagged = sorted({f.code for r in results for f in r.flags})
    forced = sorted({c for r in results for c in r.forced})
    detail = [f"forced:{','.join(forced)}"] if forced else []
    if code:
        rec.set_outcome_detail(";".join(["qc_rejected" if code == 5 else "case_failed", *detail]))
        raise _batch_error(results, code, {c.name: Path(c.source) for c in cases}, out)
    if flagged or forced:
        rec.set_outcome_detail(";".join([*detail, *(["qc_flagged:" + ",".join(flagged)] if flagged else [])]))
    return [p.parent for r in results for p in r.outputs]


def _report(r: CaseResult, single: bool) -> None:
    """One result line per case (stdout), errors on stderr; with --log-json also a machine-readable record."""
    if console.log_json:
        console.info(
            f"{r.case}: {r.status}",
            event="case_done",
            case=r.case,
            status=r.status,
            exit_code=r.exit_code,
            flags=[f.code for f in r.flags],
            organs={o["name"]: round(o["volume_ml"], 1) for o in (r.summary or {}).get("organs", [])},
            outputs=[str(p) for p in r.outputs],
            error=r.message,
        )
    if r.status == "failed":
        if console.debug and r.traceback:
            sys.stderr.write(r.traceback)
        if not single:
            console.error(f"{r.case}: {r.message}", exit_code=r.exit_code)
        return
    if r.status == "qc_rejected" and not single:
        console.error(f"{r.case}: {r.message}", exit_code=r.exit_code)
    if r.forced:
        console.warn(f"{r.case}: --force: segmented although refused ({', '.join(r.forced)}); recorded in summary")
    s = r.summary or {}
    for note in s.get("notes", []):  # the reader's and libraries' findings: on the console too, not only in the file
        console.warn(f"{r.case}: {note}")
    organs = ", ".join(f"{o['name']} {o['volume_ml']:.0f} ml" for o in s.get("organs", []))
    where = r.outputs[-1].parent if r.outputs else "-"
    seconds = s.get("timings_s", {}).get("total", 0.0)
    console.result(f"{r.case}: {r.status}; {organs or 'not segmented'}; {seconds:.1f} s -> {where}")
    if s.get("seg_not_written"):
        console.warn(f"{r.case}: no seg.dcm: {s['seg_not_written']}")
