"""Clean Graphics on overlay planes: text bits cleared, graphics without text kept, the rest removed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.pixels import pack_bits

from medseg.deid.ocr import detect_text, to_display
from tests.deid_fixtures import run_deid

OPTIONS = frozenset({"clean-graphics"})


def _with_overlay(shared: Path, folder: Path, text: str | None) -> Path:
    """A real CT slice with an overlay plane holding an ROI rectangle and, optionally, a line of text."""
    ds = pydicom.dcmread(sorted((shared / "dicom" / "ct_series_totalsegmentator").iterdir())[0])
    rows, cols = int(ds.Rows), int(ds.Columns)
    canvas = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((300, 300, 420, 400), outline=255, width=2)
    if text:
        draw.text((40, 40), text, fill=255, font=ImageFont.load_default(size=28))
    bits = (np.asarray(canvas) > 0).astype(np.uint8)
    ds.add_new(0x60000010, "US", rows)
    ds.add_new(0x60000011, "US", cols)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", pack_bits(bits.ravel()))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ct-{'text' if text else 'roi'}.dcm"
    ds.save_as(path)
    return path


def _overlay(path: Path) -> np.ndarray:
    return np.asarray(pydicom.dcmread(path).overlay_array(0x6000))


def _render(bits: np.ndarray) -> np.ndarray:
    return to_display(np.where(bits > 0, 0, 255).astype(np.uint8), "MONOCHROME2")


def test_text_in_an_overlay_is_cleared_and_the_graphics_kept(shared: Path, tmp_path: Path) -> None:
    src = _with_overlay(shared, tmp_path / "in", "SMITH JOHN 02/27/1931")
    before = _overlay(src)
    assert detect_text(_render(before)), "the planted overlay text must be detectable, or the test proves nothing"
    result = run_deid(src.parent, tmp_path / "out", scan_pixels=True, options=OPTIONS)
    rec = result.records[0]
    assert rec.status == "written", rec.reason
    after = _overlay(tmp_path / "out" / rec.output)
    summary = rec.pixels["overlays"]
    assert summary["cleaned"] and not summary["removed"]
    assert detect_text(_render(after)) == []
    cleared = np.zeros(before.shape, bool)
    for _, x0, y0, x1, y1 in summary["cleaned"]:
        cleared[y0:y1, x0:x1] = True
    assert (after[~cleared] == before[~cleared]).all(), "bits outside the text regions are unchanged"
    assert after[300:401, 300:421].sum() == before[300:401, 300:421].sum() > 0, "the ROI rectangle survives"
    manifest = json.loads((tmp_path / "out" / "deid-manifest.json").read_text())
    assert manifest["files"][0]["pixels"]["overlays"] == summary


def test_overlay_without_text_is_kept_unchanged(shared: Path, tmp_path: Path) -> None:
    src = _with_overlay(shared, tmp_path / "in", None)
    rec = run_deid(src.parent, tmp_path / "out", scan_pixels=True, options=OPTIONS).records[0]
    assert rec.pixels["overlays"]["kept"] == ["6000"]
    assert (_overlay(tmp_path / "out" / rec.output) == _overlay(src)).all()


@pytest.mark.parametrize(("options", "scan"), [(frozenset(), True), (OPTIONS, False)])
def test_overlay_removed_without_the_option_or_without_a_scan(
    shared: Path, tmp_path: Path, options: frozenset[str], scan: bool
) -> None:
    src = _with_overlay(shared, tmp_path / "in", None)
    rec = run_deid(src.parent, tmp_path / "out", scan_pixels=scan, options=options).records[0]
    out = pydicom.dcmread(tmp_path / "out" / rec.output)
    assert not [e for e in out if 0x6000 <= e.tag.group <= 0x60FF]
    if options:
        assert rec.pixels["overlays"]["removed"] == {"6000": "pixels not scanned (--pixels off)"}
