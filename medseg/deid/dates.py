"""Shift DICOM DA, DT and TM values by a keyed per-patient offset, keeping each value's precision and UTC offset."""

from __future__ import annotations

import datetime as dt
import re

from medseg.deid.keyed import Shift

_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


def _parse_da(value: str) -> dt.date | None:
    text = value.strip().replace(".", "") if len(value.strip()) == 10 else value.strip()
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def _parse_tm(value: str) -> tuple[dt.time, int, int] | None:
    """(time, number of leading components given, fraction digits) or None."""
    m = _TM.match(value.strip().replace(":", ""))
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    try:
        micro = int((frac or ".0")[1:].ljust(6, "0"))
        t = dt.time(int(hh), int(mm or 0), min(int(ss or 0), 59), micro)
    except ValueError:
        return None
    return t, 1 + (mm is not None) + (ss is not None), len(frac or ".") - 1


def _format_tm(t: dt.time, parts: int, frac: int) -> str:
    text = f"{t.hour:02d}{t.minute:02d}{t.second:02d}"[: 2 * parts]
    if frac and parts == 3:
        text += "." + f"{t.microsecond:06d}"[:frac]
    return text


def shift_da(value: str, shift: Shift) -> str | None:
    """A DA value moved back by the shift's whole days; None when it is not a valid date."""
    d = _parse_da(value)
    return None if d is None else (d - dt.timedelta(days=shift.days)).strftime("%Y%m%d")


def shift_tm(value: str, shift: Shift) -> str | None:
    """A lone TM value moved back by the shift's seconds (modulo one day); None when invalid."""
    parsed = _parse_tm(value)
    if parsed is None:
        return None
    t, parts, frac = parsed
    moved = (dt.datetime.combine(dt.date(2000, 1, 2), t) - dt.timedelta(seconds=shift.seconds)).time()
    return _format_tm(moved, parts, frac)


def shift_pair(date: str, time: str, shift: Shift) -> tuple[str, str] | None:
    """A DA and its TM moved back together (the date rolls over when the time crosses midnight)."""
    d, parsed = _parse_da(date), _parse_tm(time)
    if d is None or parsed is None:
        return None
    t, parts, frac = parsed
    moved = dt.datetime.combine(d, t) + shift.delta
    return moved.strftime("%Y%m%d"), _format_tm(moved.time(), parts, frac)


def shift_dt(value: str, shift: Shift) -> str | None:
    """A DT value moved back by the whole shift, keeping its precision and its UTC offset suffix."""
    m = _DT.match(value.strip())
    if not m:
        return None
    year, month, day, hh, mm, ss, frac, offset = m.groups()
    try:
        micro = int((frac or ".0")[1:].ljust(6, "0"))
        base = dt.datetime(
            int(year), int(month or 1), int(day or 1), int(hh or 0), int(mm or 0), min(int(ss or 0), 59), micro
        )
    except ValueError:
        return None
    moved = base + shift.delta if hh is not None else base - dt.timedelta(days=shift.days)
    full = moved.strftime("%Y%m%d%H%M%S")
    given = [year, month, day, hh, mm, ss]
    n = sum(g is not None for g in given)
    text = full[: 4 + 2 * (n - 1)]
    if frac and ss is not None:
        text += "." + f"{moved.microsecond:06d}"[: len(frac) - 1]
    return text + (offset or "")


def pair_keyword(keyword: str, vr: str) -> str | None:
    """The keyword of the other half of a date/time pair (StudyDate <-> StudyTime), or None."""
    if vr == "DA" and keyword.count("Date") == 1:
        return keyword.replace("Date", "Time")
    if vr == "TM" and keyword.count("Time") == 1:
        return keyword.replace("Time", "Date")
    return None
