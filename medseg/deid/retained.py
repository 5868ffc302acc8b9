"""Which leak-check findings are an attribute's own value kept on purpose by an Annex E option.

The options come from the output itself (its DeidentificationMethodCodeSequence, CID 7050 codes), limited to
those the run manifest lists when there is one. A finding is kept by option X only when X keeps or cleans that
attribute (its Table E.1-1 cell is K or C where the Basic Profile would not keep it, every UID under Retain UIDs,
private elements under Retain Safe Private) AND the values found are that same attribute's values in an
original (rules in `retention`); a value from another attribute (a serial number copied into a comment, a name
in a cleaned description) stays a real leak.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from medseg.deid.leakcheck import Retention
from medseg.deid.table import COMBINED, OPTIONS, load_cid7050, load_table

LOOSE_KINDS = frozenset({"value", "free text", "private text"})


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


def retention(options: frozenset[str], sources: dict[str, frozenset[tuple[int, str]]]) -> Retention:
    """(tag, values found, the element's values) -> the option keeping them there, or None for a real leak.

    Kept (K): each value found must be (or lie inside) this attribute's own value in an original, or lie inside
    one of the element's values that is (a kept station name holding a word also seen in a private tag).
    Cleaned (C): each value found must be (or lie inside) this attribute's own value in an original and,
    wherever else it occurred, be only free or private text: a name, identifier, date or place from another
    attribute inside a cleaned description is a real leak.
    """

    originals: dict[int, list[str]] = {}
    for value, seen in sources.items():
        for t, kind in seen:
            if kind == "value":
                originals.setdefault(t, []).append(f" {value} ")

    def inside(hit: str, values: Iterable[str]) -> bool:
        return any(f" {hit} " in v for v in values)

    def retained(tag: int, hits: list[str], whole: set[str]) -> str | None:
        option = option_keeping(tag, options) if options else None
        if option is None:
            return None
        own = [f" {v} " for v in whole if any(t == tag for t, _ in sources.get(v, ()))]
        for hit in hits:
            seen = sources.get(hit, frozenset())
            mine = any(t == tag for t, _ in seen) or inside(hit, originals.get(tag, ()))
            if _cleans(tag, option):
                if not mine or any(t != tag and k not in LOOSE_KINDS for t, k in seen):
                    return None
            elif not mine and not inside(hit, own):
                return None
        return option

    return retained
