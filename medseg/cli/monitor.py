"""`medseg monitor build|report`: post-market monitoring of real use, with alarms a scheduler can act on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medseg.cli.state import console

if TYPE_CHECKING:
    from medseg.models.card import ModelCard
    from medseg.monitor.facts import CaseFacts

EXIT_ALARM = 1
EXIT_INSUFFICIENT = 6
EXAMPLES = """
Examples:

  medseg monitor build --from results/ --from results-2/ --out monitor.db

  medseg monitor report --db monitor.db --out monitor-report/

  medseg monitor report --db monitor.db --reference 1-200 --cases results/ --out monitor-report/

Exit codes (report): 0 no alarm, 1 at least one alarm (see DIR/monitor.html), 2 usage, 3 invalid input,
4 cannot write, 6 not enough cases to monitor (no drift test could run; the volume range check did).
"""

monitor_app = typer.Typer(
    name="monitor",
    help="Post-market monitoring: collect per-case facts, compare recent use with a reference, raise alarms.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the `monitor` command group to the app."""
    app.add_typer(monitor_app, name="monitor")


@monitor_app.command("build", epilog=EXAMPLES)
def build(
    sources: list[Path] = typer.Option([], "--from", help="Output folder of `medseg infer` (repeat for several)."),
    pacs: Path | None = typer.Option(None, "--from-pacs", help="pacs.db with a monitor_results table (docs)."),
    out: Path = typer.Option(..., "--out", "-o", help="Monitor store (SQLite) to create or extend."),
) -> None:
    """Collect every summary.json (and PACS results) into the store; cases already stored are not added again."""
    from medseg.cli.audited import audited
    from medseg.errors import UsageError
    from medseg.guard import refuse_audit_folder
    from medseg.monitor.collect import collect_pacs, collect_summaries, find_summaries, read_pacs
    from medseg.monitor.store import MonitorStore

    if not sources and pacs is None:
        raise UsageError("nothing to collect", hint="Pass --from OUT_DIR (repeatable) and/or --from-pacs pacs.db.")
    params = {"from": list(sources), "from_pacs": pacs, "out": out}
    with audited("monitor build", params=params) as rec:
        if pacs is not None:
            rec.add_inputs([pacs])
        summaries = find_summaries(sources)  # every --from and --from-pacs checked before the store is created
        rows = read_pacs(pacs) if pacs is not None else []
        rec.add_inputs(summaries)
        refuse_audit_folder(out)
        rec.will_write([out])
        with MonitorStore.open(out, create=True) as store:
            results = [collect_summaries(store, summaries)] if sources else []
            if pacs is not None:
                results.append(collect_pacs(store, pacs, rows))
            total = len(store.cases())
        for problem in (p for r in results for p in r.problems):
            console.warn(f"skipped: {problem}")
        late = sum(r.late for r in results)
        if late:
            console.warn(f"{late} new case(s) were written before cases an earlier build stored: they are added "
                         "after them, so reports count them as recent; to order a store by writing time, build it "
                         "again from all folders in one build")  # fmt: skip
        found, added = sum(r.found for r in results), sum(r.added for r in results)
        known, skipped = sum(r.known for r in results), sum(len(r.problems) for r in results)
        rec.set_outcome_detail(f"added:{added},known:{known},skipped:{skipped},total:{total}")
        rec.add_outputs([out])
    console.result(f"{out}: {added} new case(s) of {found} found; {total} in the store")


def _reference(store_cases: list[CaseFacts], reference: str | None) -> tuple[list, list, str]:
    """Split the stored cases by `--reference` (window or another monitor.db)."""
    from medseg.errors import UsageError
    from medseg.monitor.report import split_cases
    from medseg.monitor.store import MonitorStore

    if reference and reference.endswith(".lock.json"):
        raise UsageError(
            "a validation-set reference is not supported yet",
            path=reference,
            hint="Run `medseg infer` on the set, `medseg monitor build` its outputs, and pass that monitor.db.",
        )
    if reference and Path(reference).is_file():
        with MonitorStore.open(Path(reference), readonly=True) as ref_store:
            return ref_store.cases(), store_cases, f"store {Path(reference).name}"
    return split_cases(store_cases, reference)


def _card_for(model: str) -> ModelCard | None:
    """The installed card of a stored model ("name version"): same name and version, else the name's own card."""
    from medseg.errors import MedsegError
    from medseg.models.registry import list_models, resolve_model

    name, _, version = model.partition(" ")
    try:
        cards = [m.card for m in list_models()]
    except MedsegError:
        cards = []
    exact = [c for c in cards if c.name == name and c.version == version]
    if exact:
        return exact[0]
    try:
        return resolve_model(name).card
    except MedsegError:
        return None


def _volume_ranges(cases: list[CaseFacts]) -> dict[str, tuple[float, float]]:
    """Plausible volume per organ from the card of the model (name and version) that ran the latest cases, as
    infer's QC uses it; an organ no card gives a range for uses infer's default."""
    from medseg.infer.qc import volume_range

    ranges: dict[str, tuple[float, float]] = {}
    organs = {k.split(":", 1)[1] for c in cases for k in c.numbers if k.startswith("volume_ml:")}
    latest_first = list(dict.fromkeys(c.model for c in reversed(cases)))
    for model in latest_first:
        card = _card_for(model)
        if card is None:
            continue
        for organ in organs:
            span = volume_range(card, organ)
            if span is not None:
                ranges.setdefault(organ, span)
    return ranges


def _links(folders: list[Path], secret: bytes, cases: list[CaseFacts], out: Path) -> dict[str, str]:
    """Short case key -> preview.png path relative to the report folder, for cases found under `folders`."""
    from medseg.monitor.collect import find_summaries
    from medseg.monitor.facts import case_origin, keyed_digest
    from medseg.monitor.report import short_key

    previews = {}
    for summary in find_summaries(folders):
        preview = summary.parent / "preview.png"
        if preview.is_file():
            previews[keyed_digest(case_origin(summary.parent), secret)] = preview
    return {
        short_key(c): os.path.relpath(previews[c.folder_ref], out.resolve()) for c in cases if c.folder_ref in previews
    }


@monitor_app.command("report", epilog=EXAMPLES)
def report(
    db: Path = typer.Option(..., "--db", help="Monitor store written by `medseg monitor build`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for monitor.html and monitor.json."),
    reference: str | None = typer.Option(
        None,
        "--reference",
        help="FIRST-LAST case window (1-based) or a reference monitor.db; default the first 60 cases (fixed).",
    ),
    cases: list[Path] = typer.Option([], "--cases", help="Output folders to link each alarm's cases to previews."),
) -> None:
    """Compare recent cases with the reference; write the dashboard; exit 1 on an alarm, 6 with too few cases."""
    from medseg.cli.audited import audited
    from medseg.monitor.output import write_report
    from medseg.monitor.store import MonitorStore

    shown_reference = Path(reference) if reference and Path(reference).is_file() else reference
    params = {"db": db, "out": out, "reference": shown_reference, "cases": list(cases)}
    with audited("monitor report", params=params) as rec:
        rec.add_inputs([db])
        with MonitorStore.open(db, readonly=True) as store:
            stored, secret = store.cases(), store.secret
        ref, monitored, description = _reference(stored, reference)
        links = _links(cases, secret, monitored, out) if cases else {}
        written = write_report(ref, monitored, description, out, _volume_ranges(stored), links)
        rec.add_outputs([written.json_path, written.html_path])
        alarms = written.report.alarms
        detail = f"alarms:{len(alarms)}" + (":" + ",".join(a.feature for a in alarms) if alarms else "")
        rec.set_outcome_detail(detail + (":insufficient" if written.report.insufficient else ""))
        for note in written.report.skipped:
            console.info(f"not compared: {note}")
        for alarm in alarms:
            console.warn(f"ALARM {alarm.kind}: {alarm.message}")
        if written.report.insufficient:
            console.warn(f"NOT MONITORED: {written.report.insufficient} (only the volume range check ran)")
        console.result(f"{written.html_path}: {len(alarms)} alarm(s) over {len(monitored)} monitored case(s)")
        if alarms:  # inside the audited block: the end record carries the exit code the scheduler sees
            raise typer.Exit(EXIT_ALARM)
        if written.report.insufficient:
            raise typer.Exit(EXIT_INSUFFICIENT)
