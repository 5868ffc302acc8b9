"""Which leak-check findings are an attribute's own value kept on purpose by an Annex E option.

The options come from the output itself (its DeidentificationMethodCodeSequence, CID 7050 codes), limited to
those the run manifest lists when there is one. A finding is kept by option X only when X keeps or cleans that
attribute (its Table E.1-1 cell is K or C where the Basic Profile would not keep it, or the element is private
under Retain Safe Private) AND the value found is that same attribute's value in an original; a value from any
other attribute (a name in a kept description, a serial number in a private tag) stays a real leak.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from pydicom.dataset import Dataset

from medseg.deid.table import COMBINED, OPTIONS, load_cid7050, load_table


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
    keep; Retain Safe Private for private elements; None otherwise."""
    if (tag >> 16) & 1:
        return "retain-safe-private" if "retain-safe-private" in options and tag & 0xFFFF >= 0x100 else None
    row = load_table().lookup(tag)
    if row is None or COMBINED.get(row.basic, row.basic) == "K":
        return None
    return next((o for o in OPTIONS if o in options and row.options.get(o) in ("K", "C")), None)


def retention(options: frozenset[str], sources: dict[str, frozenset[int]]) -> Callable[[int, str], str | None]:
    """(tag, value found) -> the option keeping that attribute's own value there, or None for a real leak."""

    def retained(tag: int, value: str) -> str | None:
        if not options or tag not in sources.get(value, ()):
            return None
        return option_keeping(tag, options)

    return retained
