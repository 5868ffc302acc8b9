"""Source headers made safe to copy into a SEG: values highdicom copies are normalised, so a valid segmentation is
never lost at the last step because a source carried an empty character set, a decimal comma or a malformed date.

Only the in-memory copy is changed; every change is reported as a note for summary.json.
"""

from __future__ import annotations

import math
import re
from typing import Any

TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
TEXT_KEYWORDS = ("PatientName", "PatientID", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                 "StudyDescription", "SeriesDescription")  # fmt: skip
PERSON_NAMES = ("PatientName", "ReferringPhysicianName")
IDENTIFIERS = ("PatientID", "StudyID", "AccessionNumber")
DECIMAL_KEYWORDS = ("SliceThickness", "SpacingBetweenSlices", "PixelSpacing", "PatientWeight", "PatientSize")
OPTIONAL_PATIENT_DECIMALS = ("PatientWeight", "PatientSize")
DATE_RE = re.compile(r"^\d{8}$")
AGE_RE = re.compile(r"^\d{3}[DWMY]$")
TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
SEXES = frozenset({"M", "F", "O", ""})
MAX_LENGTH = {"SH": 16, "LO": 64, "PN": 64}
UTF8 = "ISO_IR 192"


def _raw(ds: Any, keyword: str) -> str | None:
    """The value as text without pydicom's VR conversion (which raises on malformed values)."""
    try:
        elem = ds.get_item(keyword)
    except (KeyError, ValueError):
        return None
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return str(value)
    return "\\".join(str(v) for v in value)


def _decoded_text(ds: Any, keyword: str) -> str:
    """A text value decoded with the source's character set (invalid bytes replaced), '' when absent."""
    try:
        value = ds.get(keyword, None)
    except Exception:  # undecodable with the declared character set
        value = _raw(ds, keyword)
    text = "" if value is None else str(value)
    return text.encode("utf-8", "replace").decode("utf-8").strip()


def _valid_charset(ds: Any) -> bool:
    from pydicom.charset import python_encoding

    value = ds.get("SpecificCharacterSet", None)
    terms = [value] if isinstance(value, str) else list(value or [])
    return bool(terms) and all(t in python_encoding or t == "" for t in terms) and any(terms)


def normalise_source(ds: Any) -> list[str]:
    """Make the header's copied values valid for highdicom, in place; return one note per change."""
    from pydicom.datadict import dictionary_VR

    notes: list[str] = []
    for _ in ds.iterall():  # decode every value with the source's own character set before it may change
        pass
    had_charset = ds.get("SpecificCharacterSet", None)
    charset_ok = _valid_charset(ds)
    texts = {k: _decoded_text(ds, k) for k in TEXT_KEYWORDS if k in ds}
    if not charset_ok or any(not t.isascii() for t in texts.values()):
        if not charset_ok and had_charset is not None:
            notes.append(f"source SpecificCharacterSet {str(had_charset)!r} is empty or unknown; SEG written as UTF-8")
        ds.SpecificCharacterSet = UTF8
    for keyword, text in texts.items():
        if "\ufffd" in text:
            notes.append(f"source {keyword} has bytes its character set {str(had_charset)!r} cannot decode; written "
                         "in the SEG with replacement characters: it differs from the source")  # fmt: skip
        elif had_charset is None and not text.isascii():
            notes.append(f"source {keyword} holds non-ASCII characters but no SpecificCharacterSet; read as the "
                         "default repertoire and written as UTF-8: check it against the source")  # fmt: skip
        setattr(ds, keyword, _within_length(keyword, text, dictionary_VR(keyword), notes))
    for keyword, pattern in (("StudyDate", DATE_RE), ("PatientBirthDate", DATE_RE), ("StudyTime", TIME_RE)):
        value = (_raw(ds, keyword) or "").strip()
        if value and not pattern.match(value):
            notes.append(f"source {keyword} is not a valid DICOM date/time; left empty in the SEG")
            value = ""
        setattr(ds, keyword, value)
    sex = (_raw(ds, "PatientSex") or "").strip().upper()
    if sex not in SEXES:
        notes.append("source PatientSex is not M, F or O; left empty in the SEG")
        sex = ""
    ds.PatientSex = sex
    _drop_invalid_age(ds, notes)
    for keyword in DECIMAL_KEYWORDS:
        _normalise_decimal(ds, keyword, notes)
    _positive_spacing(ds, notes)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return notes


def _within_length(keyword: str, text: str, vr: str, notes: list[str]) -> str:
    """`text` as the SEG may hold it under its VR's length limit (PS3.5 6.2).

    An identifier over the limit is carried unchanged: cut short it could name another patient or exam, and left
    empty the SEG would no longer file with its patient and order in a PACS that accepted the source with that very
    value (the SEG then breaks the VR length as its source does, and dciodvfy says so). A person name is limited per
    component group (alphabetic, ideographic, phonetic), so only a group over 64 characters is shortened; a
    description is shortened."""
    limit = MAX_LENGTH.get(vr, 64)
    if keyword in PERSON_NAMES:
        groups = text.split("=")
        if any(len(g) > limit for g in groups):
            notes.append(f"source {keyword} has a component group longer than {limit} characters; that group is "
                         "shortened in the SEG")  # fmt: skip
            groups = [g[:limit] for g in groups]
        if groups[0] and "^" not in groups[0] and len(groups[0]) < limit:
            groups[0] += "^"  # a family name only: the trailing caret says so unambiguously (PS3.5 6.2.1.2)
        return "=".join(groups)
    if len(text) <= limit:
        return text
    if keyword in IDENTIFIERS:
        notes.append(f"source {keyword} is longer than the {limit} characters its VR allows; carried unchanged into "
                     "the SEG so that it files with its study (shortened, it could name another patient or exam)")
        return text
    notes.append(f"source {keyword} longer than {limit} characters; shortened in the SEG")
    return text[:limit]


def _drop_invalid_age(ds: Any, notes: list[str]) -> None:
    """PatientAge (Type 3) is copied only in its AS form, nnnD/W/M/Y; anything else would fail dciodvfy."""
    value = (_raw(ds, "PatientAge") or "").strip(" \x00")
    if value and not AGE_RE.match(value):
        notes.append("source PatientAge is not a DICOM age (nnnD, nnnW, nnnM or nnnY); omitted from the SEG")
        del ds["PatientAge"]


def _positive_spacing(ds: Any, notes: list[str]) -> None:
    """SpacingBetweenSlices is a distance, never negative in the SEG's pixel measures (some scanners write the
    signed step); its absolute value is given, with a note."""
    value = ds.get("SpacingBetweenSlices", None)
    if value is None or not str(value).strip() or float(value) >= 0:
        return
    ds.SpacingBetweenSlices = f"{abs(float(value)):.10g}"[:16]
    notes.append("source SpacingBetweenSlices is negative; the SEG gives its absolute value")


def _normalise_decimal(ds: Any, keyword: str, notes: list[str]) -> None:
    """Decimal commas become points; a value that is still not a number, or is infinite or NaN (`1e999` is a valid
    DS that reads as infinity, and would be written `inf`), is dropped with a note (all are optional here)."""
    raw = _raw(ds, keyword)
    if raw is None or (keyword in OPTIONAL_PATIENT_DECIMALS and not raw.strip(" \x00")):
        return
    parts = [p.strip().replace(",", ".") for p in raw.strip(" \x00").split("\\")]
    try:
        numbers = [float(p) for p in parts]
        if not all(math.isfinite(n) for n in numbers):
            raise ValueError("not finite")
    except ValueError:
        notes.append(f"source {keyword} is not a number; omitted from the SEG")
        del ds[keyword]
        return
    if any("," in p for p in raw.split("\\")):
        notes.append(f"source {keyword} uses a decimal comma; written with a decimal point")
    setattr(ds, keyword, [f"{n:.10g}"[:16] for n in numbers] if len(numbers) > 1 else f"{numbers[0]:.10g}"[:16])
