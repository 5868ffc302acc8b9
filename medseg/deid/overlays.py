"""Clean Graphics for overlay planes (60xx): blank the overlay bits where text is found, keep the rest.

Rule: each overlay bitmap is rendered (set bits black on white) and OCRed like an image. No text: the overlay is
kept unchanged (ROI outlines, markers). Text: its bits are cleared inside every text box grown by a margin, then
detection runs again; if anything text-like is left in a cleared region, or the overlay cannot be read or
re-encoded (multi-frame overlays, odd sizes), or pixels are not scanned (--pixels off), the whole overlay group
is removed, as the Basic Profile does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from medseg.deid.ocr import TextBox, detect_text, to_display

MARGIN_PX = 2


@dataclass
class OverlayOutcome:
    """Per overlay group: kept unchanged, cleaned (regions cleared) or removed, with the reason."""

    kept: list[int] = field(default_factory=list)
    cleaned: list[tuple[int, int, int, int, int]] = field(default_factory=list)  # group, x0, y0, x1, y1
    removed: dict[int, str] = field(default_factory=dict)

    @property
    def groups(self) -> int:
        """Overlay groups handled."""
        return len(self.kept) + len({c[0] for c in self.cleaned}) + len(self.removed)

    def summary(self) -> dict[str, object]:
        """The manifest's view: group numbers in hex, regions, reasons (no values)."""
        return {
            "kept": [f"{g:04X}" for g in self.kept],
            "cleaned": [[f"{c[0]:04X}", *c[1:]] for c in self.cleaned],
            "removed": {f"{g:04X}": r for g, r in self.removed.items()},
        }


def overlay_groups(ds: Dataset) -> list[int]:
    """Repeating groups 6000-601E that hold Overlay Data."""
    tags = list(ds.keys())  # iterating the Dataset itself would convert every element
    return sorted({t.group for t in tags if 0x6000 <= t.group <= 0x601E and not t.group & 1 and t.element == 0x3000})


def _remove(ds: Dataset, group: int) -> None:
    tags = list(ds.keys())
    for tag in [t for t in tags if t.group == group]:
        del ds[tag]


def _render(bits: np.ndarray) -> np.ndarray:
    """Set bits as black strokes on white, as the detector expects text."""
    return to_display(np.where(bits > 0, 0, 255).astype(np.uint8), "MONOCHROME2")


def _clean_one(ds: Dataset, group: int) -> list[TextBox] | str:
    """Clear the text in one overlay; the boxes cleared, or why the overlay must be removed instead."""
    from pydicom.pixels import pack_bits

    if int(ds.get((group, 0x0015), 1) or 1) > 1:
        return "multi-frame overlay"
    if (group, 0x0100) in ds and int(ds[(group, 0x0100)].value or 0) != 1:
        return "overlay stored with more than one bit per pixel"
    try:
        bits = np.array(ds.overlay_array(group), dtype=np.uint8, copy=True)
    except Exception as exc:  # an overlay pydicom cannot read cannot be checked
        return f"overlay cannot be decoded ({type(exc).__name__})"
    boxes = detect_text(_render(bits))
    if not boxes:
        return []
    height, width = bits.shape
    cleared = [b.grown(MARGIN_PX + (b.y1 - b.y0) // 6, width, height) for b in boxes]
    for b in cleared:
        bits[b.y0 : b.y1, b.x0 : b.x1] = 0
    if any(b.overlaps(c) for b in detect_text(_render(bits), filtered=False) for c in cleared):
        return "text still detected in the overlay after cleaning"
    ds[(group, 0x3000)].value = pack_bits(bits.ravel())
    return cleared


def clean_overlays(ds: Dataset, scan: bool) -> OverlayOutcome:
    """Apply the rule above to every overlay group of a de-identified dataset, in place."""
    outcome = OverlayOutcome()
    for group in overlay_groups(ds):
        result = _clean_one(ds, group) if scan else "pixels not scanned (--pixels off)"
        if isinstance(result, str):
            _remove(ds, group)
            outcome.removed[group] = result
        elif result:
            outcome.cleaned.extend((group, b.x0, b.y0, b.x1, b.y1) for b in result)
        else:
            outcome.kept.append(group)
    return outcome
