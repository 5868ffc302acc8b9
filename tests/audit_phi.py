"""PHI leak checks for the audit store: collect PHI strings from DICOM headers and file names, scan raw bytes.

Used by tests/test_audit_phi.py; extend there with more audited commands (e.g. `infer`, `deid`) as they appear.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import pydicom

MIN_LEN = 5  # shorter values ("MR", "1") are not identifying and would match by chance


def annex_e_tags(shared: Path) -> set[int]:
    """Every attribute of the DICOM PS3.15 Annex E confidentiality profile, as integer tags."""
    rows = json.loads((shared / "standard" / "confidentiality_profile_attributes.json").read_text())
    return {int(row["id"], 16) for row in rows if re.fullmatch(r"[0-9A-Fa-f]{8}", str(row.get("id", "")))}


def _values(element: pydicom.DataElement) -> Iterable[str]:
    values = element.value if element.VM > 1 else [element.value]
    for value in values:
        text = str(value).strip()
        yield text
        if element.VR == "PN":
            yield from (part.strip() for part in re.split(r"[\^=]", text))


def header_phi(files: Iterable[Path], tags: set[int]) -> set[str]:
    """String values of Annex E attributes (in any nested sequence) of the given DICOM files."""
    found: set[str] = set()

    def visit(ds: pydicom.Dataset) -> None:
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    visit(item)
            elif int(element.tag) in tags and element.VR not in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
                found.update(v for v in _values(element) if len(v) >= MIN_LEN)

    for path in files:
        visit(pydicom.dcmread(path, stop_before_pixels=True, force=True))
    return found


def name_phi(paths: Iterable[Path]) -> set[str]:
    """File and folder names and full paths; for files also the longer tokens (names, MRNs, dates in file names)."""
    found: set[str] = set()
    for path in paths:
        for part in (path.name, path.stem, str(path.resolve())):
            found.add(part)
        if not path.is_file():
            continue
        for token in re.split(r"[_\-. ]+", path.stem):
            if len(token) >= MIN_LEN and len(set(token)) > 1:
                found.add(token)
        found.update(re.findall(r"\d{2}-\d{2}-\d{4}", path.name))
    return found


def leaks(folder: Path, phi: Iterable[str]) -> list[str]:
    """PHI strings found as whole tokens (case-insensitive) in the raw bytes of every file under `folder`."""
    blobs = [p.read_bytes().lower() for p in sorted(folder.rglob("*")) if p.is_file()]
    hits = []
    for value in phi:
        needle = re.compile(rb"(?<![0-9a-z])" + re.escape(value.lower().encode("utf-8")) + rb"(?![0-9a-z])")
        if any(needle.search(blob) for blob in blobs):
            hits.append(value)
    return sorted(hits)
