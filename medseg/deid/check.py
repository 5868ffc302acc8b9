"""`medseg deid check ORIGINAL DEIDENTIFIED`: the leak check over whole trees, plus OCR of the cleaned regions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medseg.deid.leakcheck import Finding, Matchers, collect, read_any, scan_dataset, scan_raw
from medseg.deid.retained import SHIFT_OPTION, options_in, own_values, retention, shifted_dates, with_shifted_dates
from medseg.deid.runner import MANIFEST, QUARANTINE, STATE_DIR, discover
from medseg.errors import UsageError
from medseg.io.atomic import is_unfinished_write


@dataclass
class CheckResult:
    """Findings (no values), what was checked, and what was not (quarantined files are never released)."""

    findings: list[Finding] = field(default_factory=list)  # real leaks: any one fails the check
    kept: list[Finding] = field(default_factory=list)  # attributes' own values kept on purpose by an option
    files_checked: int = 0
    originals_used: int = 0
    identifying_values: int = 0
    quarantined: int = 0
    ocr_files: int = 0
    unchecked: list[tuple[str, str]] = field(default_factory=list)  # de-identified entries that could not be read
    # (symlinked folder, pipe, unreadable folder): the check cannot prove them clean, so it fails
    originals_skipped: int = 0  # entries of ORIGINAL never opened (their values are not searched for)


def _manifest(deid: Path) -> dict:
    path = deid / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError("the run manifest is not valid JSON", path=path, hint="Re-run medseg deid.") from exc


def _released(deid: Path, path: Path) -> bool:
    """Whether `path` is part of what is released: not the manifest, the run's state or a temporary write."""
    rel = path.relative_to(deid).parts if deid.is_dir() else (path.name,)
    return path.name != MANIFEST and STATE_DIR not in rel and not is_unfinished_write(path.name)


def check_tree(
    original: Path, deid: Path, ocr: bool = True, on_file: Callable[[Path], None] | None = None,
    matchers: Matchers | None = None,
) -> CheckResult:  # fmt: skip
    """Search every de-identified file for every identifying value of the originals; re-OCR cleaned regions."""
    if not original.exists() or not deid.exists():
        missing = original if not original.exists() else deid
        raise UsageError("not found", path=missing, hint="Pass the original and the de-identified folder.")
    manifest = _manifest(deid)
    options = frozenset(manifest.get("options", []))
    allowed = options if "options" in manifest else None
    originals = discover(original)
    matchers = matchers or collect(originals.files, options, with_sources=allowed is None or bool(allowed))
    outputs = discover(deid)
    result = CheckResult(originals_used=matchers.files, originals_skipped=len(originals.skipped))
    result.unchecked = [
        (path.relative_to(deid).as_posix() if deid.is_dir() else path.name, why)
        for path, why in outputs.skipped if _released(deid, path)
    ]  # fmt: skip
    result.identifying_values = len(matchers.strong.kinds) + len(matchers.parts.kinds) + len(matchers.uids.kinds)
    regions = {f["output"]: f["pixels"]["regions"] for f in manifest.get("files", []) if f.get("output")}
    sources: dict[str, Path] | None = None
    own: dict[int, list[str]] | None = None
    for path in (p for p in outputs.files if _released(deid, p)):
        rel = path.relative_to(deid).as_posix() if deid.is_dir() else path.name
        if rel.split("/")[0] == QUARANTINE:
            result.quarantined += 1
            continue
        if on_file is not None:
            on_file(path)
        data = path.read_bytes()
        ds = read_any(path, data)
        result.files_checked += 1
        kept: dict[str, str] = {}
        found = []
        if ds is not None:
            declared = options_in(ds, allowed)
            retained = None
            if declared:
                own = own_values(matchers.sources) if own is None else own
                retained = retention(declared, matchers.sources, own)
            if SHIFT_OPTION in declared:
                sources = _sources_of_outputs(original, manifest) if sources is None else sources
                source = read_any(sources[rel]) if rel in sources else None
                retained = with_shifted_dates(retained, shifted_dates(source, ds) if source is not None else {})
            found += scan_dataset(ds, matchers, rel, retained, kept)
        found += scan_raw(data, matchers, rel, kept)
        result.findings.extend(f for f in found if f.kept_by is None)
        result.kept.extend(f for f in found if f.kept_by is not None)
        if ds is None:
            continue
        if ocr and regions.get(rel):
            result.ocr_files += 1
            result.findings.extend(_ocr_regions(ds, regions[rel], rel))
    return result


def _sources_of_outputs(original: Path, manifest: dict) -> dict[str, Path]:
    """Output (relative path) -> the original it was made from, matched by the manifest's input SHA-256."""
    by_digest = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in discover(original).files}
    return {
        f["output"]: by_digest[f["input_sha256"]]
        for f in manifest.get("files", [])
        if f.get("output") and f.get("input_sha256") in by_digest
    }


def _ocr_regions(ds: object, regions: list[list[int]], name: str) -> list[Finding]:
    """Text boxes (recognised by OCR, or ink lines of the detector-free pass) found again inside the blanked regions."""
    from medseg.deid.glyphs import find_text_lines
    from medseg.deid.ocr import TextBox, detect_text
    from medseg.deid.pixels import frames_for_check

    findings = []
    for index, display in frames_for_check(ds, sorted({r[0] for r in regions})):
        cleaned = [TextBox(r[1], r[2], r[3], r[4], 1.0, 0) for r in regions if r[0] == index]
        ink_lines = [TextBox(*line, 1.0, 0) for line in find_text_lines(display)]
        for box in detect_text(display) + ink_lines:
            if any(box.overlaps(c) for c in cleaned):
                findings.append(
                    Finding(name, f"pixels, frame {index}, box {box.x0},{box.y0}-{box.x1},{box.y1}", "burned-in text")
                )
    return findings
