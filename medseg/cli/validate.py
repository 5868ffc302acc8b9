"""`medseg validate`, `medseg validation lock`, `medseg report sign|verify`: release validation of a model."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import typer

from medseg.cli.state import console

EXIT_TAMPERED = 1
EXIT_NOT_SUPPORTED = 1  # the validation ran and its record is written, but it does not support release
EXAMPLES = """
Examples:

  medseg validation lock liver_real_manual_v1

  medseg validate --model liver --set liver_real_manual_v1 --out val/ --junit junit.xml

  medseg keys generate --out keys/ --name qa-lead

  medseg report sign val/ --key keys/qa-lead.key --signer "A. Reviewer" --meaning approved

  medseg report verify val/ --public-key keys/qa-lead.key.pub

validate exits 0 only when the record supports release: the set is one of the project's locked sets
(validation/sets/), every criterion of the project's pre-specified criteria (validation/acceptance/) passes, the
traceability matrix of --junit (a test run of this very code) is complete, no test of that run failed, and no
hazard's residual risk is marked not acceptable; otherwise it exits 1 and report.json says why (the record is
still written). It refuses (exit 3) a set that lists a scan twice, whose files differ from the set file or its
lock, or that shares a file digest, voxel content, DICOM UID or patient with any training manifest of the model,
or when a training CT of the model is missing from the data root (MEDSEG_DATA_ROOT) so its voxels cannot be
compared (--allow-unverified-independence runs it anyway; the record then does not support release).
report sign signs only a report.json that a recorded `medseg validate` run wrote, with its artifacts intact,
and signs it --meaning approved only when that record supports release (exit 1 otherwise); report verify exits 1
and names each changed file on any change.
"""

validation_app = typer.Typer(name="validation", help="Locked validation test sets.", no_args_is_help=True)
report_app = typer.Typer(name="report", help="Sign and verify validation reports.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `validate`, `validation` and `report` to the app."""
    app.command("validate", epilog=EXAMPLES)(validate)
    app.add_typer(validation_app, name="validation")
    app.add_typer(report_app, name="report")


def validate(
    set_name: str = typer.Option(..., "--set", help="Locked set name in validation/sets/ (or a set .yaml path)."),
    out: Path = typer.Option(..., "--out", "-o", help="New, empty output folder for the report and its artifacts."),
    model: str | None = typer.Option(None, "--model", help="Installed model name or folder (default: the organ's)."),
    acceptance: str = typer.Option("liver_v1", "--acceptance", help="Criteria in validation/acceptance/ (or path)."),
    junit: Path | None = typer.Option(None, "--junit", help="JUnit XML of this release's test run (traceability)."),
    backend: str = typer.Option("auto", "--backend", help="auto (OpenVINO on CPU), openvino, onnxruntime, torch."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite next to --out)."
    ),
    allow_unverified_independence: bool = typer.Option(
        False,
        "--allow-unverified-independence",
        help="Run although training CTs are missing from the data root (their voxels are not compared); the "
        "record then does not support release.",
    ),
) -> None:
    """Validate a model on a locked, independence-checked test set: metrics, CIs, subgroups, acceptance, report."""
    from medseg.cli.audited import audited
    from medseg.errors import UsageError
    from medseg.io.atomic import staging_folder
    from medseg.signals import deferred_interrupt
    from medseg.validation.html import ci_label
    from medseg.validation.run import ValidationRequest, run_validation
    from medseg.validation.tracking import fail_run, finish_run, open_store, start_run

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is not empty" if out.is_dir() else "is a file"
        raise UsageError(f"the output folder {what}", path=out, hint="A validation writes into a new folder.")
    if junit is not None:
        from medseg.validation.traceability import read_junit

        read_junit(junit)  # a malformed file is refused before the model runs on every case
    params = {
        "set": set_name,
        "model": model,
        "acceptance": acceptance,
        "backend": backend,
        "device": device,
        "allow_unverified_independence": allow_unverified_independence,
    }
    with audited("validate", params=params) as rec:
        stage = staging_folder(out)  # hidden sibling; renamed onto --out only when the record is complete
        try:
            store: list[str] = []
            req = ValidationRequest(model, set_name, stage, acceptance, backend, device,
                                    allow_unverified_independence=allow_unverified_independence)  # fmt: skip
            report = run_validation(req, _case_line, lambda: store.append(open_store(tracking_uri, out)))
            rec.set_model(report["model"]["name"], report["model"]["version"], report["model"]["weights_sha256"])
            rec.add_inputs(_inputs(set_name, acceptance, model))
            mlflow_run = start_run(report, out, store[0])
            rec.link_mlflow_run(mlflow_run["run_id"], mlflow_run["tracking_uri"])
            try:
                report = _finish(stage, report | {"mlflow": mlflow_run}, junit)
                finish_run(mlflow_run, out, report["acceptance"]["verdict"], files=stage)
                with deferred_interrupt():
                    commit_new_folder(stage, out)
            except BaseException:
                fail_run(mlflow_run, out)
                raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        rec.add_outputs([out / "report.json", out / "report.html"])
        rec.set_outcome_detail(f"verdict:{report['acceptance']['verdict']}")
        agg = report["aggregates"]["dice"]
        ci = f"{ci_label(report['bootstrap']['level'])} {agg['ci_low']:.3f}-{agg['ci_high']:.3f}, n={agg['n']}"
        verdict = report["acceptance"]["verdict"].upper()
        console.result(
            f"{report['set']['name']}: mean Dice {agg['mean']:.3f} ({ci}); verdict {verdict}; {out / 'report.html'}"
        )
        if not report["release"]["supported"]:  # inside the audited block: the record carries this exit code
            for reason in report["release"]["reasons"]:
                console.result(f"  release not supported: {reason}")
            raise typer.Exit(EXIT_NOT_SUPPORTED)


def commit_new_folder(stage: Path, out: Path) -> None:
    """Rename the finished record `stage` onto `out` only while `out` is absent or an empty folder (one rename(2),
    which refuses a folder with files in it, so nothing of another folder is merged or replaced): an --out that
    another process filled while the validation ran is refused (UsageError, exit 2), left untouched, and the
    record is removed with its staging folder by the caller (its MLflow run, marked FAILED, keeps its files)."""
    import errno
    import os

    from medseg.errors import ProcessingError, UsageError

    try:
        os.rename(stage, out)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise UsageError("the output folder was created and written by something else while the validation "
                             "ran; it was left as it is and this record was not written", path=out,
                             hint="Rerun with a new --out.") from exc  # fmt: skip
        raise ProcessingError(f"cannot move the record into place: {exc.strerror}", path=out,
                              hint="Check free disk space and permissions.") from exc  # fmt: skip
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _inputs(set_name: str, acceptance: str, model: str | None) -> list[Path]:
    """The set file, its lock, the criteria and the model weights (the data files are bound by the lock's digests)."""
    from medseg.models.registry import resolve_model
    from medseg.validation.acceptance import acceptance_path
    from medseg.validation.sets import load_set, set_paths

    yaml_path, lock_path = set_paths(set_name)
    organ = load_set(yaml_path).organ
    return [yaml_path, lock_path, acceptance_path(acceptance), resolve_model(model, organ).weights_path]


def _case_line(case_id: str, row: dict) -> None:
    organ = next(iter(row["metrics"]))
    m = row["metrics"][organ]
    flags = row["inference"]["qc_flags"]
    console.info(f"{case_id}: {row['inference']['status']}, Dice {m['dice']:.3f}, HD95 {m['hd95_mm']:.1f} mm"
                 + (f", QC flags {', '.join(flags)}" if flags else ""))  # fmt: skip


def _finish(out: Path, report: dict, junit: Path | None) -> dict:
    from medseg.validation.html import write_html
    from medseg.validation.records import attach_records, release_supported
    from medseg.validation.report import write_report

    record = attach_records(report, out, junit)
    supported, reasons = release_supported(record)
    final = write_report(out, record | {"release": {"supported": supported, "reasons": reasons}})
    write_html(out, final)
    return final


@validation_app.command("lock", epilog=EXAMPLES)
def lock(
    name: str = typer.Argument(..., help="Set name in validation/sets/ (NAME.yaml) or a set .yaml path."),
) -> None:
    """Digest every file of a test set (they must match the set file) and write NAME.lock.json."""
    from medseg.cli.audited import audited
    from medseg.validation.sets import lock_set, set_paths

    yaml_path, lock_path = set_paths(name)
    with audited("validation lock", params={"set": name}) as rec:
        rec.add_inputs([yaml_path])
        result = lock_set(name)
        rec.add_outputs([lock_path])
    console.result(f"locked {result['name']}: {len(result['cases'])} case(s), set digest {result['set_digest']}")


@report_app.command("sign", epilog=EXAMPLES)
def sign(
    folder: Path = typer.Argument(..., help="Validation output folder (holds report.json)."),
    key: Path = typer.Option(..., "--key", help="Ed25519 private key (from `medseg keys generate`)."),
    signer: str = typer.Option(..., "--signer", help="Printed name of the person signing."),
    meaning: str = typer.Option(
        ..., "--meaning", help="reviewed, or approved (only a record that supports release: validate exited 0)."
    ),
    pdf: bool = typer.Option(False, "--pdf", help="Also print report.pdf from the signed HTML (needs Chromium)."),
) -> None:
    """Sign a validation report: name, meaning and UTC time, bound to the SHA-256 of every file in the folder."""
    from medseg.cli.audited import audited
    from medseg.keys import load_private_key
    from medseg.validation.html import render
    from medseg.validation.report import HTML, PDF
    from medseg.validation.signing import (
        SIGNATURE,
        check_signable,
        clear_unfinished,
        discard,
        sign_folder,
        signature_info,
        staged_file,
    )

    private = load_private_key(key)
    info = signature_info(signer, meaning, private.public_key())
    with audited("report sign", params={"signer": info.signer, "meaning": meaning, "key_id": info.key_id}) as rec:
        rec.add_inputs([folder / "report.json"])
        if folder.is_dir() and not (folder / SIGNATURE).exists():
            clear_unfinished(folder)
        report = check_signable(folder, info.meaning)
        staged = {HTML: staged_file(folder, HTML)}
        try:  # the signed page and PDF are written beside the originals and replace them only with the signature
            staged[HTML].write_text(render(report, info), encoding="utf-8")
            if pdf:
                from medseg.validation.pdf import write_pdf

                staged[PDF] = staged_file(folder, PDF)
                write_pdf(folder, html=staged[HTML], out=staged[PDF])
            sign_folder(folder, private, info, staged)
        finally:
            discard(list(staged.values()))
        rec.add_outputs([folder / SIGNATURE, folder / "report.html"] + ([folder / "report.pdf"] if pdf else []))
    console.result(f"signed {folder}: {info.meaning} by {info.signer} at {info.signed_at_utc} (key {info.key_id})")


@report_app.command("verify", epilog=EXAMPLES)
def verify(
    folder: Path = typer.Argument(..., help="Signed validation output folder."),
    public_key: Path = typer.Option(..., "--public-key", help="The signer's public key (.pub)."),
) -> None:
    """Check the signature and every file's digest; exit 1 naming each change."""
    from medseg.cli.audited import audited
    from medseg.keys import load_public_key
    from medseg.validation.signing import verify_folder

    public = load_public_key(public_key)
    with audited("report verify", params={}) as rec:
        rec.add_inputs([folder])
        result = verify_folder(folder, public)
        rec.set_outcome_detail("intact" if result.ok else "tampered")
        if result.ok:
            p = result.predicate
            console.result(f"report intact: {p['meaning']} by {p['signer']} at {p['signed_at_utc']} "
                           f"(key {p['key_id']}); {p['model']}, verdict {p['verdict']}"
                           + ("; release NOT supported" if p.get("release_supported") is False else ""))  # fmt: skip
            for reason in p.get("release_reasons") or []:
                console.result(f"  release not supported: {reason}")
            return
        console.result(f"report NOT intact: {len(result.problems)} problem(s)")
        for problem in result.problems:
            console.result(f"  {problem}")
        raise typer.Exit(EXIT_TAMPERED)  # inside the audited block: the record carries exit 1
