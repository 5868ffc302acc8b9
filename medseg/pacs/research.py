"""The optional de-identified research copy of each segmented study (`research:` in the service's config).

After the SEG reached its destination, the study's instances and its SEG are de-identified together by
`medseg deid`'s engine (PS3.15 Annex E, keyed UIDs: the SEG still references its de-identified CT), the copy is
searched for every identifying value of the originals with `medseg deid check`'s leak check, and only a copy with
no finding is published, whole, as RESEARCH/<keyed study UID>/. Nothing identifying is ever written under RESEARCH:
the work happens in the service's storage (STORAGE/research/job-N-fF/, N the job, F its lease's fence), beside the
received studies it is made from, and a copy with a finding is withheld there (STORAGE/research/withheld/job-N),
never published. A killed worker leaves only its staging behind, which the next attempt removes and redoes.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_write_text, is_unfinished_write, sync_paths
from medseg.pacs.config import Research
from medseg.pacs.storage import fsync_dir

STAGING = "research"
WITHHELD = "withheld"
INCOMING = ".incoming-"
RECORD = "research-record.json"
RESEARCH_STATES = ("published", "withheld", "superseded")
_ONE_AT_A_TIME = threading.Lock()  # worker threads of one process share the OCR engine; a copy is CPU-bound anyway


@dataclass(frozen=True)
class ResearchOutcome:
    """How one job's research copy ended: published (folder name under RESEARCH), withheld (reason: tag and file,
    never a value) or superseded (a later generation's copy of the study was already published and is kept);
    files = de-identified instances in the copy, quarantined = those deid withheld."""

    state: str
    folder: str | None
    files: int
    quarantined: int
    reason: str | None = None


def staging_dir(storage: Path, job_id: int, fence: int) -> Path:
    """Where one lease of a job works (in the service's storage: it holds the originals' links)."""
    return Path(storage) / STAGING / f"job-{job_id}-f{fence}"


def clear_stale_staging(storage: Path, job_id: int, fence: int) -> None:
    """Remove the staging of this job's earlier leases (their holders died or lost the lease)."""
    root = Path(storage) / STAGING
    if not root.is_dir():
        return
    for old in root.glob(f"job-{job_id}-f*"):
        if old.name != f"job-{job_id}-f{fence}":
            shutil.rmtree(old, ignore_errors=True)


def link_inputs(sources: list[Path], dest: Path, skip: frozenset[str] = frozenset()) -> int:
    """Hard-link (copy across file systems) every file of `sources` (folders or files) under `dest`, each source
    in its own numbered folder so names cannot collide, except files in a source folder named in `skip` and the
    temporary files of writes a killed receiver cut short; returns the number of files."""
    if dest.exists():
        shutil.rmtree(dest)
    count = 0
    for i, src in enumerate(sources):
        files = [src] if src.is_file() else sorted(
            p for p in src.rglob("*") if p.is_file() and p.name not in skip and not is_unfinished_write(p.name)
        )
        for f in files:
            target = dest / f"{i:02d}" / (f.name if src.is_file() else f.relative_to(src))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
            count += 1
    return count


def _study_folder(out: Path) -> Path | None:
    """The one keyed study folder deid wrote (None when nothing was written)."""
    from medseg.deid.runner import QUARANTINE, STATE_DIR

    found = [p for p in out.iterdir() if p.is_dir() and p.name not in (STATE_DIR, QUARANTINE)]
    if len(found) > 1:
        raise MedsegError(f"the study gave {len(found)} de-identified studies, expected one", path=out)
    return found[0] if found else None


def published_generation(target: Path) -> int:
    """The study generation of the copy published at `target` (0 when there is none)."""
    try:
        return int(json.loads((target / RECORD).read_text()).get("generation", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def publish(copy: Path, target: Path) -> None:
    """Move a finished copy to `target`, replacing an earlier copy of the same study (an earlier generation, or
    this job's own copy from an attempt killed before it was recorded). The copy is first made whole under a hidden
    name beside `target` (copied when the research folder is on another file system) and synced; the earlier copy
    is moved aside and removed, so `target` holds one whole copy or, for an instant, none."""
    target.parent.mkdir(parents=True, exist_ok=True)
    incoming, trash = target.with_name(INCOMING + target.name), target.with_name(INCOMING + target.name + ".old")
    for leftover in (incoming, trash):
        shutil.rmtree(leftover, ignore_errors=True)
    if copy.stat().st_dev == target.parent.stat().st_dev:
        os.rename(copy, incoming)
    else:
        shutil.copytree(copy, incoming)
    sync_paths([p for p in incoming.rglob("*") if p.is_file()])
    if target.exists():
        os.rename(target, trash)
    os.rename(incoming, target)
    fsync_dir(target.parent)
    shutil.rmtree(trash, ignore_errors=True)


def make_copy(research: Research, storage: Path, job_id: int, fence: int, inputs: list[Path],
              record: dict[str, Any], on_file: Callable[[Any], None] | None = None,
              skip: frozenset[str] = frozenset()) -> ResearchOutcome:  # fmt: skip
    """De-identify `inputs` (the study folder and its SEG), prove the copy with the leak check, publish or withhold
    it; `record` (no identifying value, with the job's `generation`) is written beside the copy as
    research-record.json; `on_file` is called after each file is de-identified; file names in `skip` are left out
    of input folders (the PACS's echo of the SEG that `inputs` holds itself). One copy at a time per process."""
    with _ONE_AT_A_TIME:
        return _make_copy(research, storage, job_id, fence, inputs, record, on_file, skip)


def _make_copy(research: Research, storage: Path, job_id: int, fence: int, inputs: list[Path],
               record: dict[str, Any], on_file: Callable[[Any], None] | None,
               skip: frozenset[str]) -> ResearchOutcome:  # fmt: skip
    from medseg.deid.check import check_tree
    from medseg.deid.runner import MANIFEST, DeidSettings, deidentify_tree
    from medseg.keys import read_secret, secret_id

    secret = read_secret(research.key_file)
    clear_stale_staging(storage, job_id, fence)
    work = staging_dir(storage, job_id, fence)
    originals, out = work / "input", work / "deid"
    link_inputs(inputs, originals, skip)
    scan = research.pixels == "scan"
    settings = DeidSettings(frozenset(research.options), scan_pixels=scan, workers=research.workers)
    warnings.filterwarnings("ignore", category=UserWarning)  # pydicom's notes on odd inputs; the manifest says enough
    result = deidentify_tree(originals, out, secret, settings, on_file=on_file)
    quarantined = result.count("quarantined")
    written = result.count("written")
    study = _study_folder(out)
    if study is None:
        return _withhold(storage, job_id, work, 0, quarantined, "no instance could be de-identified")
    try:
        check = check_tree(originals, out, ocr=scan, secret=secret)
    except MedsegError as exc:  # the check refused the copy (a released file the run did not write, ...)
        return _withhold(storage, job_id, work, written, quarantined, f"leak check refused the copy: {exc.one_line()}")
    reason = _not_proved(check, scan)
    if reason is not None:
        return _withhold(storage, job_id, work, written, quarantined, reason)
    target = research.folder / study.name
    if published_generation(target) > int(record.get("generation", 0)):
        shutil.rmtree(work, ignore_errors=True)
        return ResearchOutcome("superseded", None, written, quarantined, "a later generation's copy is published")
    shutil.copy2(out / MANIFEST, study / MANIFEST)
    record = record | {
        "deid": {"profile": "basic", "options": sorted(research.options), "pixels": research.pixels,
                 "key_id": secret_id(secret), "files_written": written, "files_quarantined": quarantined},
        "leak_check": {"files_checked": check.files_checked, "identifying_values_searched": check.identifying_values,
                       "findings": 0, "ocr_files": check.ocr_files,
                       "pixels_unchecked": len(check.pixels_unchecked)},
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    atomic_write_text(study / RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n", overwrite=True)
    publish(study, target)
    shutil.rmtree(work, ignore_errors=True)
    return ResearchOutcome("published", study.name, written, quarantined)


def _not_proved(check: Any, scan: bool) -> str | None:
    """Why the leak check does not prove the copy clean (withheld), or None: a leak, an entry it could not check, or
    (with `pixels: scan`) an image whose pixels it could not OCR. With `pixels: off` the operator chose to release
    unscanned pixels; the record says how many."""
    if check.findings:
        more = f" (and {len(check.findings) - 1} more)" if len(check.findings) > 1 else ""
        return f"leak check: {check.findings[0].line()}{more}"
    if check.unchecked:
        name, why = check.unchecked[0]
        return f"leak check could not check {name}: {why}"
    if scan and check.pixels_unchecked:
        name, why = check.pixels_unchecked[0]
        return f"leak check could not check the pixels of {name}: {why}"
    return None


def _withhold(storage: Path, job_id: int, work: Path, files: int, quarantined: int, reason: str) -> ResearchOutcome:
    """Keep the de-identified attempt for inspection in STORAGE/research/withheld/job-N (never published); the
    reason names the tag and file, never the value."""
    target = Path(storage) / STAGING / WITHHELD / f"job-{job_id}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(work / "input", ignore_errors=True)
    os.rename(work, target)
    atomic_write_text(target / "reason.txt", reason + "\n", overwrite=True)
    return ResearchOutcome("withheld", None, files, quarantined, reason)


def outcome_json(outcome: ResearchOutcome) -> str:
    """The outcome as one JSON line (what the queue keeps)."""
    return json.dumps(asdict(outcome), sort_keys=True)
