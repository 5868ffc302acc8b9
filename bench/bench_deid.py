"""Benchmark and conformance figures for `medseg deid` on the shared corpus (deid/ and dicom/).

Run: `.venv/bin/python bench/bench_deid.py [--parts throughput,pixels,recall,fp,options,dciodvfy]`

Measured in one run on the same files:
  throughput  files/s of medseg header path (--pixels off) without and with the leak check, against dicognito and
              Kitware dicom-anonymizer (install them for the benchmark only: `.venv/bin/uv pip install --python
              .venv/bin/python dicognito==0.19.0 dicom-anonymizer==2.1.0`; never added to requirements.lock);
              each tool's Table E.1-1 Basic actions applied (medseg.deid.conformance) and leak-check findings.
  pixels      files/s of the pixel path (OCR of every image) on deid/, with the leak check's re-OCR.
  recall      burned-in text boxes blanked (>= 50 % / >= 95 % of the box) over the ground truth of deid/.
  fp          clean CT slices (CHAOS 78 + TotalSegmentator 20) with any blanked region.
  options     per option: Basic/option actions applied, must-keep attributes kept, and leak-check findings
              split into real leaks and values kept on purpose by the option, on deid/ and dicom/.
  dciodvfy    dicom3tools' dciodvfy errors before and after, per file: files with new errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deid_measure import clean_ct_slices, false_positive_slices, recall

from medseg.deid.check import check_tree
from medseg.deid.conformance import Conformance, dciodvfy_baseline, dciodvfy_errors, measure
from medseg.deid.leakcheck import collect, read_any
from medseg.deid.runner import DeidSettings, deidentify_tree, discover, usable_cpus
from medseg.deid.table import OPTIONS
from medseg.digests import default_data_root

SHARED = default_data_root()
SECRET = b"bench-secret-bench-secret-bench-secret"
ROOTS = ("deid", "dicom")
REPEATS = 3


def _files(root: Path) -> list[Path]:
    return [p for p in discover(root).files if read_any(p) is not None and p.name.upper() != "DICOMDIR"]


def _conformance(pairs: list[tuple[Path, Path]], options: frozenset[str] = frozenset()) -> Conformance:
    total = Conformance()
    for original, output in pairs:
        try:
            total.add(measure(read_any(original), pydicom.dcmread(output, force=True), options))
        except Exception:
            continue
    return total


def _medseg_pairs(root: Path, out: Path, statuses: tuple[str, ...] = ("written",)) -> list[tuple[Path, Path]]:
    manifest = json.loads((out / "deid-manifest.json").read_text())
    by_sha = {f["input_sha256"]: f for f in manifest["files"] if f["status"] in statuses}
    pairs = []
    for path in discover(root).files:
        rec = by_sha.get(hashlib.sha256(path.read_bytes()).hexdigest())
        if rec:
            pairs.append((path, out / rec["output"]))
    return pairs


def run_medseg(
    tmp: Path, scan: bool, roots: tuple[str, ...] = ROOTS, options: frozenset[str] = frozenset(), workers: int = 1
) -> dict:
    """medseg over the roots: seconds, files, conformance, leak findings (and check seconds)."""
    seconds, files, pairs, leaks, check_seconds, quarantined, kept = 0.0, 0, [], 0, 0.0, 0, 0
    where: Counter[str] = Counter()
    for name in roots:
        out = tmp / f"medseg-{name}-{int(scan)}-{len(options)}-{hash(options) & 0xFFFF}-{workers}"
        t0 = time.perf_counter()
        settings = DeidSettings(options, scan_pixels=scan, workers=workers)
        result = deidentify_tree(SHARED / name, out, SECRET, settings)
        seconds += time.perf_counter() - t0
        files += sum(r.status in ("written", "quarantined") for r in result.records)
        quarantined += result.count("quarantined")
        t0 = time.perf_counter()
        checked = check_tree(SHARED / name, out, ocr=scan)
        check_seconds += time.perf_counter() - t0
        leaks += len(checked.findings)
        kept += len(checked.kept)
        where.update(f"{f.location[-11:]} {f.kind}" for f in checked.findings)
        pairs += _medseg_pairs(SHARED / name, out)
    conf = _conformance(pairs, options)
    return {"seconds": seconds, "files": files, "check_seconds": check_seconds, "leaks": leaks,
            "kept_by_option": kept, "leak_places": where.most_common(5), "quarantined": quarantined,
            "applied_pct": conf.applied_pct, "kept_pct": conf.kept_pct,
            "failures": conf.failures.most_common(5)}  # fmt: skip


def _peer(kind: str):
    if kind == "dicognito":
        from dicognito.anonymizer import Anonymizer

        anonymizer = Anonymizer()

        def run(src: Path, dst: Path) -> None:
            ds = pydicom.dcmread(src, force=True)
            anonymizer.anonymize(ds)
            ds.save_as(dst)

        return run
    from dicomanonymizer import anonymize_dicom_file

    return lambda src, dst: anonymize_dicom_file(str(src), str(dst))


def run_peer(kind: str, tmp: Path) -> dict | str:
    """A peer tool on the same readable files: seconds, files, failures, conformance, leak findings."""
    try:
        tool = _peer(kind)
    except ImportError:
        return f"{kind} is not installed: pip install it into the venv for the benchmark (never into the lock)"
    seconds, done, failed, pairs, leaks = 0.0, 0, 0, [], 0
    for name in ROOTS:
        out = tmp / f"{kind}-{name}"
        out.mkdir(parents=True)
        files = _files(SHARED / name)
        t0 = time.perf_counter()
        for i, path in enumerate(files):
            dst = out / f"{i:05d}.dcm"
            try:
                tool(path, dst)
                pairs.append((path, dst))
                done += 1
            except Exception:
                failed += 1
        seconds += time.perf_counter() - t0
        leaks += len(check_tree(SHARED / name, out, ocr=False).findings)
    conf = _conformance(pairs)
    return {"seconds": seconds, "files": done, "failed": failed, "leaks": leaks,
            "applied_pct": conf.applied_pct, "kept_pct": conf.kept_pct}  # fmt: skip


def dciodvfy_compare(tmp: Path) -> dict:
    """Files (written or quarantined) whose de-identified output has dciodvfy errors the input did not have."""
    if shutil.which("dciodvfy") is None:
        return {"error": "dciodvfy not installed (dicom3tools; scripts/setup.sh installs it)"}
    new_files, checked, new_kinds = 0, 0, {}
    for name in ROOTS:
        out = tmp / f"dciodvfy-{name}"
        deidentify_tree(SHARED / name, out, SECRET, DeidSettings(scan_pixels=False))
        for original, output in _medseg_pairs(SHARED / name, out, ("written", "quarantined")):
            checked += 1
            added = dciodvfy_errors(output) - dciodvfy_baseline(original, tmp / "baseline.dcm")
            new_files += bool(added)
            for kind in added:
                new_kinds[kind] = new_kinds.get(kind, 0) + 1
    return {"files": checked, "files_with_new_errors": new_files,
            "new_errors": sorted(new_kinds.items(), key=lambda kv: -kv[1])[:10]}  # fmt: skip


def _timed_run(tool: str, tmp: Path, rep: int) -> float:
    """Seconds for one more header-only run of a tool over the same files (outputs only; no check)."""
    seconds = 0.0
    for name in ROOTS:
        out = tmp / f"again-{tool.replace(' ', '')}-{name}-{rep}"
        if tool.startswith("medseg"):
            workers = int(tool.split()[-1]) if "--workers" in tool else 1
            t0 = time.perf_counter()
            deidentify_tree(SHARED / name, out, SECRET, DeidSettings(scan_pixels=False, workers=workers))
            seconds += time.perf_counter() - t0
            continue
        run, files = _peer(tool), _files(SHARED / name)
        out.mkdir(parents=True)
        t0 = time.perf_counter()
        for i, path in enumerate(files):
            try:
                run(path, out / f"{i:05d}.dcm")
            except Exception:
                continue
        seconds += time.perf_counter() - t0
    return seconds


def throughput(tmp: Path) -> dict:
    """Header-only files/s of medseg (one process and one worker per CPU) and the peers on the same files.

    The machine's load changes from second to second, so the tools take turns, REPEATS times each, and each
    tool's best time counts; its first run also gives conformance and leak-check figures.
    """
    collect(discover(SHARED / "deid").files)  # warm the readers' imports before timing
    figures: dict = {"medseg": run_medseg(tmp, scan=False)}
    cpus = usable_cpus()
    if cpus > 1:
        figures[f"medseg --workers {cpus}"] = run_medseg(tmp, scan=False, workers=cpus)
    for kind in ("dicognito", "dicom-anonymizer"):
        peer = run_peer(kind, tmp)
        if isinstance(peer, str):
            print(peer, file=sys.stderr)
        figures[kind] = peer
    tools = [t for t, fig in figures.items() if isinstance(fig, dict)]
    for rep in range(1, REPEATS):
        for tool in tools:
            figures[tool]["seconds"] = min(figures[tool]["seconds"], _timed_run(tool, tmp, rep))
    for tool in tools:
        fig = figures[tool]
        fig["files_per_s"] = fig["files"] / fig["seconds"]
        if "check_seconds" in fig:
            fig["files_per_s_with_check"] = fig["files"] / (fig["seconds"] + fig["check_seconds"])
    if "dicognito" in tools:
        peer = figures["dicognito"]["files_per_s"]
        for tool in [t for t in tools if t.startswith("medseg")]:
            figures[f"speedup_vs_dicognito ({tool})"] = figures[tool]["files_per_s"] / peer
            figures[f"speedup_vs_dicognito with check ({tool})"] = figures[tool]["files_per_s_with_check"] / peer
    return figures


def main() -> None:
    """Run the chosen parts and print one JSON document of figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="throughput,pixels,recall,fp,options,dciodvfy")
    parts = set(parser.parse_args().parts.split(","))
    warnings.simplefilter("ignore")
    figures: dict = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if "throughput" in parts:
            figures["header_only"] = throughput(tmp)
        if "pixels" in parts:
            pix = run_medseg(tmp, scan=True, roots=("deid",))
            pix["files_per_s"] = pix["files"] / pix["seconds"]
            pix["files_per_s_with_check"] = pix["files"] / (pix["seconds"] + pix["check_seconds"])
            figures["pixel_path_deid"] = pix
        if "recall" in parts:
            r = recall(SHARED)
            figures["recall"] = {"boxes": r.boxes, "found_50pct": r.found, "blanked_95pct": r.full,
                                 "recall": r.found / r.boxes, "s_per_image": sum(r.seconds) / len(r.seconds),
                                 "missed": r.missed}  # fmt: skip
        if "fp" in parts:
            flagged, seconds = false_positive_slices(clean_ct_slices(SHARED))
            figures["clean_ct"] = {"slices": len(seconds), "with_text_regions": flagged,
                                   "s_per_slice": sum(seconds) / len(seconds)}  # fmt: skip
        if "options" in parts:
            figures["options"] = {}
            for option in ("none", *OPTIONS):
                chosen = frozenset() if option == "none" else frozenset({option})
                res = run_medseg(tmp, scan=False, options=chosen)
                keys = ("applied_pct", "kept_pct", "leaks", "kept_by_option", "leak_places", "failures")
                figures["options"][option] = {k: res[k] for k in keys}
        if "dciodvfy" in parts:
            figures["dciodvfy"] = dciodvfy_compare(tmp)
    print(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
