"""Which leak-check findings are an attribute's own value kept on purpose by an Annex E option.

The options come from the output itself (its DeidentificationMethodCodeSequence, CID 7050 codes), limited to
those the run manifest lists when there is one. A finding is kept by option X only when X keeps or cleans that
attribute (its Table E.1-1 cell is K or C where the Basic Profile would not keep it, every UID under Retain UIDs,
private elements under Retain Safe Private) AND the values found are that same attribute's values in an
original (rules in `retention`); a value from another attribute (a serial number copied into a comment, a name
in a cleaned description) stays a real leak. Under Retain Longitudinal Modified Dates a shifted date can equal some
other real date of the corpus by chance; it is kept by that option only when it is its own attribute's original
date moved back by the file's shift (`shifted_dates`), so an unshifted or copied date stays a real leak.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections import Counter
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from medseg.deid.leakcheck import Retention, element_values, normalise, walk_elements
from medseg.deid.table import COMBINED, OPTIONS, load_cid7050, load_table

LOOSE_KINDS = frozenset({"value", "free text", "private text"})
SHIFT_OPTION = "retain-dates-shifted"
DATE_VRS = ("DA", "DT")


@functools.cache
def _names_by_code() -> dict[str, str]:
    return {code: name for name, (code, _) in load_cid7050().items()}


def options_in(ds: Dataset, allowed: Iterable[str] | None = None) -> frozenset[str]:
    """Options a de-identified dataset declares in (0012,0064), within `allowed` (the manifest's) when given."""
    names = set()
    for item in ds.get("DeidentificationMethodCodeSequence", None) or []:
        if str(item.get("CodingSchemeDesignator", "")) == "DCM":
            name = _names_by_code().get(str(item.get("CodeValue", "")))
            if name in OPTIONS:
                names.add(name)
    return frozenset(names if allowed is None else names & set(allowed))


@functools.cache
def option_keeping(tag: int, options: frozenset[str]) -> str | None:
    """The option among `options` that keeps (K) or cleans (C) the attribute `tag` the Basic Profile would not
    keep: its Table E.1-1 cell; Retain UIDs for every UID; Retain Safe Private for private elements."""
    if (tag >> 16) & 1:
        return "retain-safe-private" if "retain-safe-private" in options else None
    if "retain-uids" in options and _vr(tag) == "UI":
        return "retain-uids"
    row = load_table().lookup(tag)
    if row is None or COMBINED.get(row.basic, row.basic) == "K":
        return None
    return next((o for o in OPTIONS if o in options and row.options.get(o) in ("K", "C")), None)


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def _cleans(tag: int, option: str) -> bool:
    row = load_table().lookup(tag)
    return row is not None and row.options.get(option) == "C"


def own_values(sources: dict[str, frozenset[tuple[int, str]]]) -> dict[int, list[str]]:
    """Attribute tag -> its own values in the originals, space-padded for whole-word containment; built once per
    check (it spans the whole corpus), then shared by every file's `retention`."""
    originals: dict[int, list[str]] = {}
    for value, seen in sources.items():
        for t, kind in seen:
            if kind == "value":
                originals.setdefault(t, []).append(f" {value} ")
    return originals


def retention(
    options: frozenset[str],
    sources: dict[str, frozenset[tuple[int, str]]],
    originals: dict[int, list[str]],
    patient: dict[str, frozenset[tuple[int, str]]] | None = None,
) -> Retention:
    """(tag, values found, the element's values) -> the option keeping them there, or None for a real leak.

    Kept (K): each value found must be (or lie inside) this attribute's own value in an original, or lie inside
    one of the element's values that is (a kept station name holding a word also seen in a private tag).
    Cleaned (C): each value found must be (or lie inside) this attribute's own value in an original and,
    wherever else it occurred, be only free or private text: a name, identifier, date or place from another
    attribute inside a cleaned description is a real leak. Either way, a value that was also the patient's name or
    an ID of 8+ characters (group 0010) in an original is a real leak: a station name that is the patient's name is
    not device identity. `originals` is `own_values(sources)`. `patient`: the sources of the output's own original
    when the check knows it (by the run's keyed digests or its pixels): the patient rule then looks at that patient
    only ('Scott Community Hospital' kept for Davidson is no leak because another patient is KAUFMAN^SCOTT: review
    18b #5); without it, at every patient of the originals.
    """

    def inside(hit: str, values: Iterable[str]) -> bool:
        return any(f" {hit} " in v for v in values)

    def retained(tag: int, hits: list[str], whole: set[str]) -> str | None:
        option = option_keeping(tag, options) if options else None
        if option is None:
            return None
        own = [f" {v} " for v in whole if any(t == tag for t, _ in sources.get(v, ()))]
        for hit in hits:
            seen = sources.get(hit, frozenset())
            theirs = seen if patient is None else patient.get(hit, frozenset())
            if tag >> 16 != 0x0010 and (_patients_own(hit, theirs) or _patients_name_or_date(theirs)):
                return None  # no option keeps the patient's name, ID or dates, wherever else it was written
            mine = any(t == tag for t, _ in seen) or inside(hit, originals.get(tag, ()))
            if _cleans(tag, option):
                if not mine or any(t != tag and k not in LOOSE_KINDS for t, k in seen):
                    return None
            elif not mine and not inside(hit, own):
                return None
        return option

    return retained


def _patients_name_or_date(seen: frozenset[tuple[int, str]]) -> bool:
    """Whether a value was a date or (a part of) a name in the Patient group of an original: never excused by an
    option, wherever it is found (a private block declared safe holding the birth date and 'Mr <surname>')."""
    return any(t >> 16 == 0x0010 and k in ("date", "person name", "person name part") for t, k in seen)


def _patients_own(hit: str, seen: frozenset[tuple[int, str]]) -> bool:
    """Whether `hit` was a Patient module name, or an ID long enough not to be a placeholder ('123456' is a patient
    ID and a device serial number in the test corpus alike)."""
    long_id = len(hit.replace(" ", "")) >= 8
    return any(t >> 16 == 0x0010 and (k == "person name" or (k == "identifier" and long_id)) for t, k in seen)


def _day(value: str) -> int | None:
    """The proleptic day number of a DA, or of a DT's date part; None when it holds no valid full date."""
    digits = re.sub(r"\D", "", value)
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])).toordinal()
    except ValueError:
        return None


def shifted_dates(original: Dataset, output: Dataset) -> dict[int, set[str]]:
    """Per tag, the output's DA/DT values that are the same element's original date moved back by the file's shift.

    The shift is the most common whole-day move over the file's dates (a date moved with its time may cross midnight:
    one day more or less is accepted); a date that did not move, or moved by another amount (a copy of another
    date), is not in the result and stays a finding."""
    before = {path: elem for path, elem in walk_elements(original) if elem.VR in DATE_VRS}
    moved: list[tuple[int, str, int]] = []
    for path, elem in walk_elements(output):
        if elem.VR not in DATE_VRS or path not in before:
            continue
        for new, old in zip(element_values(elem.value), element_values(before[path].value), strict=False):
            a, b = _day(old), _day(new)
            if a is not None and b is not None:
                moved.append((int(elem.tag), new, a - b))
    counts = Counter(days for _, _, days in moved if days > 0)
    if not counts:
        return {}
    shift = counts.most_common(1)[0][0]
    out: dict[int, set[str]] = {}
    for tag, new, days in moved:
        if days > 0 and abs(days - shift) <= 1:
            out.setdefault(tag, set()).update({normalise(new), new.strip("\0 ")})
    return out


def with_shifted_dates(inner: Retention | None, shifted: dict[int, set[str]]) -> Retention:
    """`inner` for every element but dates: a DA/DT element is kept by Retain Modified Dates only when it holds its
    own shifted dates (`shifted_dates`; empty when the original is unknown), else it is a real leak."""

    def retained(tag: int, hits: list[str], whole: set[str]) -> str | None:
        if _vr(tag) in DATE_VRS:
            return SHIFT_OPTION if tag in shifted and whole <= shifted[tag] else None
        return inner(tag, hits, whole) if inner else None

    return retained
