"""Measurements shared by bench_deid.py and the slow pixel test: burned-in text recall and clean-CT false positives."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset

from medseg.deid.conformance import box_coverage
from medseg.deid.pixels import scan_and_clean


@dataclass
class Recall:
    """Ground-truth boxes found (>= 50 % blanked) and fully blanked (>= 95 %), per image timings."""

    boxes: int = 0
    found: int = 0
    full: int = 0
    seconds: list[float] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)


def ground_truth(shared: Path) -> list[tuple[Path, list[tuple[int, int, int, int]]]]:
    """(image, boxes) for the 13 JSL images and the 2 ultrasounds: 138 boxes in all."""
    items = []
    for gt in sorted((shared / "deid" / "burned_in_text_jsl").glob("*.json")):
        data = json.loads(gt.read_text())
        boxes = [tuple(a[part]["bbox"]) for a in data["annotation"] for part in ("key", "value") if "bbox" in a[part]]
        items.append((gt.with_name(data["filename"]), boxes))
    for gt in sorted((shared / "deid" / "deid_data" / "ultrasounds").glob("*.burned_in_text.json")):
        data = json.loads(gt.read_text())
        items.append((gt.with_name(data["file"]), [tuple(a["bbox"]) for a in data["annotations"]]))
    return items


def _scan(path: Path) -> tuple[list[tuple[int, int, int, int, int]], str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
        if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
        outcome = scan_and_clean(ds, scan=True)
    return outcome.regions, outcome.status


def recall(shared: Path, items: list[tuple[Path, list]] | None = None) -> Recall:
    """Blank the text of each ground-truth image and count the boxes covered."""
    result = Recall()
    for path, boxes in items or ground_truth(shared):
        t0 = time.perf_counter()
        regions, _ = _scan(path)
        result.seconds.append(time.perf_counter() - t0)
        flat = [r[1:] for r in regions if r[0] == 0]
        for box in boxes:
            cover = box_coverage(box, flat)
            result.boxes += 1
            result.found += cover >= 0.5
            result.full += cover >= 0.95
            if cover < 0.5:
                result.missed.append(f"{path.name[:30]} {box}")
    return result


def clean_ct_slices(shared: Path) -> list[Path]:
    """The 98 clean CT slices: CHAOS (78) and the TotalSegmentator sample (20)."""
    chaos = sorted((shared / "ct" / "chaos_ct_sample" / "dicom").iterdir())
    total = sorted((shared / "dicom" / "ct_series_totalsegmentator").iterdir())
    return [p for p in chaos + total if p.is_file()]


def false_positive_slices(paths: list[Path]) -> tuple[int, list[float]]:
    """How many clean slices get any text region, and the seconds per slice."""
    flagged, seconds = 0, []
    for path in paths:
        t0 = time.perf_counter()
        regions, _ = _scan(path)
        seconds.append(time.perf_counter() - t0)
        flagged += bool(regions)
    return flagged, seconds
