"""Collect summaries into the monitor store: infer output folders, and PACS job records when a PACS database is given.

Cases are added in the order their summaries were written (file modification time, then path), so the store's order
is the order of use; per-case times are not stored. The store keeps one time, that of the newest summary collected,
so that a later build adding older summaries (appended after the cases already stored, so counted as recent) is
reported rather than silently reordering the windows.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import InvalidInputError, UsageError
from medseg.io.atomic import is_unfinished_write
from medseg.monitor.facts import CaseFacts, facts_from_summary, read_summary
from medseg.monitor.store import MonitorStore

SUMMARY_NAME = "summary.json"


def _delivered(path: Path, root: Path) -> bool:
    """A summary.json that a run delivered: a file, not inside a hidden `.tmp-` staging folder of a run that was
    killed before moving its outputs into place (never a result anyone received)."""
    return path.is_file() and not any(is_unfinished_write(part) for part in path.relative_to(root).parts)
PACS_TABLE = "monitor_results"


@dataclass
class Collected:
    """What one build did: summaries found, cases added, already known, and unreadable files (with reasons)."""

    found: int = 0
    added: int = 0
    known: int = 0
    problems: list[str] = field(default_factory=list)
    late: int = 0  # new cases whose summary is older than the newest one an earlier build collected


# What a summary of unexpected shape can still raise past facts.py's checks: refused like a malformed summary.
_SHAPE_ERRORS = (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError, RecursionError)


def find_summaries(folders: list[Path]) -> list[Path]:
    """Every summary.json under the folders, oldest first; a missing folder raises InvalidInputError, a file that is
    not a summary.json, or a folder with none anywhere below it (the input scans instead of the output folder),
    UsageError: either would silently add nothing ("0 found")."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise InvalidInputError(
                "output folder not found", path=folder, hint="Pass folders written by medseg infer."
            )
        if folder.is_file() and folder.name != SUMMARY_NAME:
            raise UsageError(
                f"not an output folder nor a {SUMMARY_NAME}",
                path=folder,
                hint=f"Pass the folder `medseg infer --out` wrote (or one of its {SUMMARY_NAME} files).",
            )
        here = [folder] if folder.is_file() else sorted(p for p in _walk(folder) if _delivered(p, folder))
        if not here:
            raise UsageError(
                f"no {SUMMARY_NAME} in this folder or below it: not an output folder of `medseg infer`",
                path=folder,
                hint=f"Pass the folder `medseg infer --out` wrote (or one of its {SUMMARY_NAME} files), not its input",
            )
        found += here
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return sorted(unique, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def _walk(folder: Path) -> list[Path]:
    """Every summary.json below `folder`, following symlinked folders (an output folder linked in from another
    disk is still read) and visiting each real folder once (a link loop ends)."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        found += [Path(root) / SUMMARY_NAME] if SUMMARY_NAME in files else []
    return found


def collect_folders(store: MonitorStore, folders: list[Path]) -> Collected:
    """Add every new summary under `folders` (`find_summaries`, then `collect_summaries`)."""
    return collect_summaries(store, find_summaries(folders))


def collect_summaries(store: MonitorStore, summaries: list[Path]) -> Collected:
    """Add every new summary of the list (from `find_summaries`, so that a caller can check the folders before it
    creates a store); an unreadable summary is reported and skipped, not fatal."""
    result = Collected()
    key = store.secret
    facts: list[CaseFacts] = []
    newest, written = store.newest_written_ns, {}
    for path in summaries:
        result.found += 1
        try:
            facts.append(read_summary(path, key))
            written[facts[-1].case_key] = path.stat().st_mtime_ns
        except InvalidInputError as exc:
            result.problems.append(exc.one_line())
        except _SHAPE_ERRORS as exc:
            result.problems.append(f"{path}: malformed summary ({type(exc).__name__}). Rerun `medseg infer`.")
    if newest is not None:
        result.late = sum(t < newest and not store.known(k) for k, t in written.items())
    result.added = store.add(facts, "summary", max(written.values(), default=None))
    result.known = len(facts) - result.added
    return result


def read_pacs(pacs_db: Path) -> list[tuple[int, str]]:
    """The (job_order, summary_json) rows of the PACS service's `monitor_results` table, read-only; a missing file
    or table raises InvalidInputError, so a build can refuse it before it creates a store."""
    if not Path(pacs_db).is_file():
        raise InvalidInputError("PACS database not found", path=pacs_db, hint="Pass the pacs.db of `medseg pacs`.")
    try:
        conn = sqlite3.connect(f"file:{Path(pacs_db).resolve()}?mode=ro", uri=True)
        try:
            rows = conn.execute(f"SELECT job_order, summary_json FROM {PACS_TABLE} ORDER BY job_order").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise InvalidInputError(
            f"cannot read PACS results: {exc}",
            path=pacs_db,
            hint=f"It needs a table {PACS_TABLE}(job_order INTEGER, summary_json TEXT); see docs/monitor.md.",
        ) from exc
    return rows


def collect_pacs(store: MonitorStore, pacs_db: Path, rows: list[tuple[int, str]] | None = None) -> Collected:
    """Add the summaries the PACS service recorded in its `monitor_results(job_order, summary_json)` table (`rows`
    when the caller read them already with `read_pacs`)."""
    result = Collected()
    rows = read_pacs(pacs_db) if rows is None else rows
    key = store.secret
    facts: list[CaseFacts] = []
    for order, text in rows:
        result.found += 1
        raw = str(text).encode("utf-8")
        try:
            summary = json.loads(raw)
            facts.append(facts_from_summary(summary, raw, f"pacs-job-{order}", key))
        except InvalidInputError as exc:
            result.problems.append(f"{pacs_db}: job {order}: {exc.message}")
        except _SHAPE_ERRORS as exc:
            result.problems.append(f"{pacs_db}: job {order}: malformed summary ({type(exc).__name__}: {exc})")
    result.added = store.add(facts, "pacs")
    result.known = len(facts) - result.added
    return result
