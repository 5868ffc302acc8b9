"""PS3.15 Annex E Table E.1-1 (edition 2024b) and CID 7050, loaded once from the package data files."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources

from medseg.errors import UsageError

OPTIONS = (
    "retain-safe-private",
    "retain-uids",
    "retain-device-identity",
    "retain-institution-identity",
    "retain-patient-characteristics",
    "retain-dates-full",
    "retain-dates-shifted",
    "clean-descriptors",
    "clean-structured-content",
    "clean-graphics",
    "clean-pixel-data",
)
# Without the IOD's attribute types at hand, a combined code resolves to the outcome that is always conformant:
# a dummy (D) where a value may be required, an empty value (Z) where only presence may be, new UIDs inside (U*).
COMBINED = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U"}
ACTIONS = ("D", "Z", "X", "K", "C", "U")


@dataclass(frozen=True)
class Row:
    """One row of Table E.1-1: the tag pattern, name, Basic Profile code and each option's code."""

    tag: str
    name: str
    basic: str
    options: dict[str, str] = field(default_factory=dict)

    def action(self, options: frozenset[str]) -> str:
        """The single action (D, Z, X, K, C or U) for the chosen options; retaining wins over cleaning."""
        chosen = [self.options[o] for o in OPTIONS if o in options and o in self.options]
        if "K" in chosen:
            return "K"
        if chosen:
            return chosen[0]
        return COMBINED.get(self.basic, self.basic)


@dataclass(frozen=True)
class Table:
    """Table E.1-1 indexed by tag key: 8 hex digits, upper case, 'X' for the digits a row leaves open."""

    edition: str
    rows: dict[str, Row]

    def lookup(self, tag: int) -> Row | None:
        """The row for a standard tag (repeating groups 50xx and 60xx included), or None."""
        key = f"{tag:08X}"
        row = self.rows.get(key)
        if row is None and 0x5000 <= tag >> 16 <= 0x50FF and not (tag >> 16) & 1:
            row = self.rows.get("50XXXXXX")
        if row is None and 0x6000 <= tag >> 16 <= 0x60FF and not (tag >> 16) & 1:
            row = self.rows.get("60XX" + key[4:])
        return row


def tag_key(text: str) -> str:
    """'(60XX,4000)' -> '60XX4000'."""
    return text.strip("()").replace(",", "").upper()


def _data(name: str) -> dict:
    return json.loads(resources.files("medseg.deid").joinpath("data", name).read_text(encoding="utf-8"))


@functools.cache
def load_table() -> Table:
    """Table E.1-1 from medseg/deid/data/table_e1_1.json (private attributes are handled apart, not by row)."""
    data = _data("table_e1_1.json")
    rows = {
        tag_key(r["tag"]): Row(r["tag"], r["name"], r["basic"], dict(r["options"]))
        for r in data["rows"]
        if "GGGG" not in r["tag"]
    }
    return Table(data["edition"], rows)


@functools.cache
def load_cid7050() -> dict[str, tuple[str, str]]:
    """CID 7050 codes by profile/option name: (code value, code meaning), scheme DCM."""
    return {k: (v[0], v[1]) for k, v in _data("cid7050.json")["codes"].items()}


@functools.cache
def load_safe_attributes() -> frozenset[str]:
    """Keywords of standard attributes outside the table that are kept (safe_attributes.json, both parts)."""
    data = _data("safe_attributes.json")
    return frozenset(data["non_text"]) | frozenset(data["text"])


def check_options(options: list[str] | tuple[str, ...]) -> frozenset[str]:
    """Validate option names; the two date options exclude each other."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown de-identification option(s) {unknown}", hint=f"Choose from {', '.join(OPTIONS)}.")
    chosen = frozenset(options)
    if {"retain-dates-full", "retain-dates-shifted"} <= chosen:
        raise UsageError("retain-dates-full and retain-dates-shifted exclude each other", hint="Choose one.")
    return chosen
