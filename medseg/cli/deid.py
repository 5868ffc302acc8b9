"""`medseg deid INPUT OUTPUT --key-file KEY` and `medseg deid check ORIGINAL DEIDENTIFIED`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from medseg.cli.state import console

EXAMPLES = """Examples:

  medseg keys secret deid.key

  medseg deid study/ deid-out/ --key-file deid.key

  medseg deid study/ deid-out/ --key-file deid.key --option retain-dates-shifted --option clean-descriptors

  medseg deid run study/ deid-out/ --key-file deid.key --strict   (the same as without `run`)

  medseg deid check study/ deid-out/ --key-file deid.key

Output: OUTPUT/<study UID>/<series UID>/<instance UID>.dcm (new keyed UIDs), OUTPUT/quarantine/ for files whose
pixels could not be cleaned with confidence, OUTPUT/deid-manifest.json (keyed digests and actions, no
values). The release is OUTPUT without its top-level deid-manifest.json, .deid-state/ and quarantine/.
Re-running with the same key gives identical outputs and completes an interrupted run.
Exit codes: 0 ok, 1 leak found (check), 2 usage, 3 invalid input (--strict), 4 processing failure,
6 (check) no leak found but the pixels of some released images were NOT checked (--no-ocr, OCR unavailable,
undecodable): the release is not certified.
"""


class _DefaultRun(TyperGroup):
    """`medseg deid A B` means `medseg deid run A B`; `medseg deid check A B` runs the check."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


deid_app = typer.Typer(
    name="deid",
    cls=_DefaultRun,
    help="De-identify DICOM (PS3.15 Annex E, burned-in text included) and prove no identity remains.",
    no_args_is_help=True,
    epilog=EXAMPLES,
)


def register(app: typer.Typer) -> None:
    """Add the `deid` command group to the app."""
    app.add_typer(deid_app, name="deid")


@deid_app.command("run", epilog=EXAMPLES)
def run(
    input: Path = typer.Argument(..., help="DICOM file or folder (searched recursively); never modified."),
    output: Path = typer.Argument(..., help="New or empty folder (or one from an interrupted run with the same key)."),
    key_file: Path = typer.Option(..., "--key-file", help="Secret of >= 32 bytes (`medseg keys secret FILE`)."),
    profile: str = typer.Option("basic", "--profile", help="Confidentiality profile (basic)."),
    option: list[str] = typer.Option([], "--option", help="Annex E option; repeat. See docs/deid.md."),
    pixels: str = typer.Option("scan", "--pixels", help="scan: OCR every image and blank text; off: header only."),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 3) on the first non-DICOM or truncated file."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: one per CPU); outputs do not depend on it."),
) -> None:
    """De-identify DICOM files into OUTPUT with keyed UIDs, pseudonyms and date shifts."""
    from medseg.cli.audited import audited
    from medseg.deid.runner import DeidSettings, deidentify_tree, usable_cpus
    from medseg.deid.table import check_options
    from medseg.errors import UsageError
    from medseg.keys import read_secret, secret_id

    if profile != "basic":
        raise UsageError(f"unknown profile {profile!r}", hint="Only --profile basic exists.")
    if pixels not in ("scan", "off"):
        raise UsageError(f"unknown --pixels {pixels!r}", hint="Use scan or off.")
    if workers < 0:
        raise UsageError(f"--workers {workers} is negative", hint="Give 0 (one per CPU) or a positive number.")
    workers = workers or usable_cpus()
    options = check_options(option)
    secret = read_secret(key_file)
    params = {"profile": profile, "options": sorted(options), "pixels": pixels, "strict": strict,
              "key_id": secret_id(secret)}  # fmt: skip
    warnings.filterwarnings("ignore", category=UserWarning)  # pydicom's notes on odd inputs; records say enough
    with audited("deid", params=params) as rec:
        rec.add_inputs([input])
        settings = DeidSettings(options, scan_pixels=pixels == "scan", strict=strict, workers=workers)
        with console.progress("de-identifying", total=None) as advance:
            result = deidentify_tree(input, output, secret, settings, on_file=lambda r: advance(1, last=r.status))
        written = [output / r.output for r in result.records if r.output and r.status == "written"]
        rec.add_outputs([*written, result.manifest])
        for r in result.records:
            if r.status in ("skipped", "dropped", "quarantined", "failed", "withdrawn"):
                console.warn(f"{r.status}: input {r.input_ref[:24]}...: {r.reason}")
        counts = {s: result.count(s) for s in ("written", "quarantined", "skipped", "dropped", "failed", "withdrawn")}
        resumed = sum(r.resumed for r in result.records)
        rec.set_outcome_detail("deid:" + ",".join(f"{k}={v}" for k, v in counts.items()) + f",resumed={resumed}")
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        console.result(f"{output}: {summary or 'no files'} ({resumed} already done); manifest {result.manifest}")
        if counts["failed"]:
            from medseg.errors import ProcessingError

            raise ProcessingError(f"{counts['failed']} file(s) failed", path=result.manifest,
                                  hint="See the manifest's reasons; rerun with --debug and report it.")  # fmt: skip


@deid_app.command("check", epilog=EXAMPLES)
def check(
    original: Path = typer.Argument(..., help="The original file or folder."),
    deidentified: Path = typer.Argument(..., help="The de-identified output folder (with deid-manifest.json)."),
    ocr: bool = typer.Option(
        True,
        "--ocr/--no-ocr",
        help="OCR every released image (--no-ocr: pixels NOT checked, exit 6).",
    ),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="The run's key: checks each output's original is in ORIGINAL (keyed digests)."
    ),
) -> None:
    """Prove no identifying value of ORIGINAL remains in DEIDENTIFIED (exit 1 naming tag and file, never the value)."""
    from medseg.cli.audited import audited
    from medseg.deid.check import check_tree

    warnings.filterwarnings("ignore", category=UserWarning)
    with audited("deid check", params={"ocr": ocr, "keyed": key_file is not None}) as rec:
        rec.add_inputs([original, deidentified])
        secret = None
        if key_file is not None:
            from medseg.keys import read_secret

            secret = read_secret(key_file)
        if not deidentified.is_dir():
            from medseg.errors import UsageError

            raise UsageError("not a folder: DEIDENTIFIED is the output folder of `medseg deid`", path=deidentified,
                             hint="Pass the folder the run wrote (it holds deid-manifest.json).")  # fmt: skip
        result = check_tree(original, deidentified, ocr=ocr, secret=secret)
        if result.files_checked == 0 and result.quarantined == 0 and not result.unchecked:
            from medseg.errors import UsageError

            raise UsageError("nothing released here to check (no file, none quarantined): a check of nothing proves "
                             "nothing", path=deidentified, hint="Pass the folder `medseg deid` wrote.")  # fmt: skip
        for finding in result.findings:
            console.error(finding.line(), exit_code=1)
        for name, why in result.unchecked:
            console.error(f"{name}: {why}; it could not be checked, so the check fails (remove it or replace the link "
                          "by the files)", exit_code=1)  # fmt: skip
        if result.originals_skipped:
            console.warn(f"{result.originals_skipped} entry(ies) of {original} not read (links to folders, pipes, "
                         "unreadable folders): their identifying values are not searched for")  # fmt: skip
        by_option: dict[str, int] = {}
        for finding in result.kept:
            by_option[finding.kept_by or ""] = by_option.get(finding.kept_by or "", 0) + 1
        for name, count in sorted(by_option.items()):
            console.info(f"{count} value(s) kept on purpose by option {name} (each attribute's own value; not a leak)")
        kept = ",".join(f"{k}={v}" for k, v in sorted(by_option.items()))
        rec.set_outcome_detail(
            f"leaks={len(result.findings)},unchecked={len(result.unchecked)},files={result.files_checked},"
            f"pixels_unchecked={len(result.pixels_unchecked)},files_unchecked={len(result.files_unchecked)},"
            f"kept=[{kept}]"
        )
        console.result(
            f"{deidentified}: {len(result.findings)} leak(s) in {result.files_checked} file(s) checked against "
            f"{result.identifying_values} identifying values of {result.originals_used} original(s); "
            f"{result.ocr_files} re-OCRed; {result.quarantined} quarantined file(s) not released"
            + (f"; {len(result.unchecked)} entry(ies) that could not be checked" if result.unchecked else "")
            + (f"; pixels NOT checked in {len(result.pixels_unchecked)} image(s)" if result.pixels_unchecked else "")
            + (f"; {len(result.files_unchecked)} file(s) NOT checked" if result.files_unchecked else "")
        )
        _pixels_unchecked(result.pixels_unchecked)
        for name, why in result.files_unchecked:
            console.warn(f"{name}: NOT checked ({why}); identity inside it is not ruled out, so the check does not "
                         "pass (exit 6): remove it from the release or release it as DICOM or text")  # fmt: skip
        if result.findings or result.unchecked:
            raise typer.Exit(1)
        if result.pixels_unchecked or result.files_unchecked:
            raise typer.Exit(6)


def _pixels_unchecked(unchecked: list[tuple[str, str]]) -> None:
    """One warning per reason: how many released images had their pixels NOT checked, and why."""
    reasons: dict[str, list[str]] = {}
    for name, why in unchecked:
        reasons.setdefault(why, []).append(name)
    for why, names in sorted(reasons.items()):
        console.warn(
            f"pixels NOT checked in {len(names)} released image(s) ({why}; first: {names[0]}): burned-in "
            "text there is not ruled out, so the check does not pass them (exit 6); run it with OCR"
        )
