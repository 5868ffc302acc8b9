"""Measure de-identification independently of the engine: Table E.1-1 actions applied, useful attributes kept,
burned-in text boxes removed."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from medseg.deid.table import load_table

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Attributes that carry no identity and that analysis needs; over-removal of any of them is a defect.
MUST_KEEP = (
    "SOPClassUID", "Modality", "ImageType", "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient",
    "ImagePositionPatient", "SliceThickness", "SpacingBetweenSlices", "SliceLocation", "KVP", "ConvolutionKernel",
    "XRayTubeCurrent", "ExposureTime", "RepetitionTime", "EchoTime", "FlipAngle", "MagneticFieldStrength",
    "ScanningSequence", "SequenceVariant", "MRAcquisitionType", "SeriesNumber", "InstanceNumber",
    "AcquisitionNumber", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PhotometricInterpretation", "SamplesPerPixel", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "WindowCenter", "WindowWidth", "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "PatientPosition",
    "NumberOfFrames", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "SegmentSequence", "ReferencedSeriesSequence", "ReferencedFrameOfReferenceSequence", "ROIContourSequence",
)  # fmt: skip


@dataclass
class Conformance:
    """Counts of table actions found applied, and of must-keep attributes that survived."""

    applied: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    kept: int = 0
    keep_total: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, other: Conformance) -> None:
        """Accumulate another file's counts."""
        self.applied.update(other.applied)
        self.total.update(other.total)
        self.failures.update(other.failures)
        self.kept += other.kept
        self.keep_total += other.keep_total

    @property
    def applied_pct(self) -> float:
        """Percentage of table actions applied over all element occurrences checked."""
        total = sum(self.total.values())
        return 100.0 * sum(self.applied.values()) / total if total else 100.0

    @property
    def kept_pct(self) -> float:
        """Percentage of must-keep attribute occurrences present and unchanged."""
        return 100.0 * self.kept / self.keep_total if self.keep_total else 100.0


def _text(value: object) -> str:
    return "" if value is None else str(value)


def outcome_ok(code: str, before: object, after: object, present: bool, vr: str) -> bool:
    """Whether one element's output satisfies one action code (combined codes: any part)."""
    if "/" in code:
        return any(outcome_ok(part.rstrip("*"), before, after, present, vr) for part in code.split("/"))
    old, new = _text(before), _text(after)
    if code == "X":
        return not present
    if not present:
        return False
    if vr == "SQ":
        return code != "Z" or not after
    if code == "Z":
        return new == "" or new != old
    if code == "D":
        return new != "" and (new != old or old == "")
    if code == "K":
        return new == old
    if code == "C":
        return True
    if code == "U":
        uids = [u for u in new.strip("[]").replace("'", "").replace(",", " ").split() if u]
        return (old == "" or new != old) and all(_UID.match(u) and len(u) <= 64 for u in uids)
    return False


def measure(original: Dataset, output: Dataset, options: frozenset[str] = frozenset()) -> Conformance:
    """Compare one original and its de-identified output level by level (sequence items paired by position)."""
    result = Conformance()
    _level(original, output, options, result)
    for keyword in MUST_KEEP:
        if keyword in original:
            result.keep_total += 1
            result.kept += _kept(original[keyword], output.data_element(keyword))
    return result


def _kept(before: object, after: object) -> bool:
    """Present and unchanged; a sequence: present with the same number of items (their UIDs are replaced)."""
    if after is None:
        return False
    if before.VR == "SQ":  # type: ignore[attr-defined]
        return len(before.value or []) == len(after.value or [])  # type: ignore[attr-defined]
    return _text(after.value) == _text(before.value)  # type: ignore[attr-defined]


def _level(original: Dataset, output: Dataset | None, options: frozenset[str], result: Conformance) -> None:
    table = load_table()
    for elem in original:
        row = table.lookup(elem.tag) if not elem.tag.is_private else None
        present = output is not None and elem.tag in output
        after = output[elem.tag].value if present else None
        if elem.tag.is_private:
            code = "X" if "retain-safe-private" not in options else "X/K"
            name = "private"
        elif row is None:
            if elem.VR == "SQ" and present:
                for a, b in zip(elem.value or [], after or [], strict=False):
                    _level(a, b, options, result)
            continue
        else:
            chosen = [row.options[o] for o in sorted(options) if o in row.options]
            code, name = ("K" if "K" in chosen else chosen[0]) if chosen else row.basic, row.tag
        result.total[name] += 1
        ok = outcome_ok(code, elem.value, after, present, elem.VR)
        result.applied[name] += ok
        if not ok:
            result.failures[f"{name} {code}"] += 1
        if elem.VR == "SQ" and present and after:
            for a, b in zip(elem.value or [], after, strict=False):
                _level(a, b, options, result)


def box_coverage(box: tuple[int, int, int, int], regions: list[tuple[int, int, int, int]]) -> float:
    """Fraction of a ground-truth box [x0, y0, x1, y1] covered by the union of blanked regions."""
    x0, y0, x1, y1 = box
    width, height = max(0, x1 - x0), max(0, y1 - y0)
    if width == 0 or height == 0:
        return 1.0
    covered = [[False] * width for _ in range(height)]
    for rx0, ry0, rx1, ry1 in regions:
        for y in range(max(y0, ry0), min(y1, ry1)):
            row = covered[y - y0]
            for x in range(max(x0, rx0), min(x1, rx1)):
                row[x - x0] = True
    return sum(map(sum, covered)) / (width * height)


def dciodvfy_errors(path: Path) -> set[str]:
    """dicom3tools dciodvfy's error lines for one file, values, UIDs and numbers masked (so equal problems compare
    equal between an original and its de-identified output)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return {re.sub(r'"[^"]*"|[\d.]+', "#", line) for line in lines if line.startswith("Error")}


def dciodvfy_baseline(original: Path, scratch: Path) -> set[str]:
    """The original's dciodvfy errors; for one dciodvfy cannot read (deflated, odd encodings), plus those of a plain
    re-encoding of it written to `scratch` (explicit VR little endian, nothing else changed)."""
    found = dciodvfy_errors(original)
    if not any("Dicom dataset read failed" in e for e in found):
        return found
    ds = pydicom.dcmread(original, force=True)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(scratch, enforce_file_format=True)
    return found | dciodvfy_errors(scratch)
