"""The detector-free ink pass (medseg/deid/glyphs.py): tiny burned-in text over noise is found and blanked, clean CT
and text-free images give nothing."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont

from medseg.deid.check import check_tree
from medseg.deid.conformance import box_coverage
from medseg.deid.glyphs import find_text_lines, read_ink, text_blocks
from medseg.deid.ocr import to_display
from medseg.deid.pixels import _decode, _frames, _render, scan_and_clean
from tests.deid_fixtures import refresh_digests, run_deid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from deid_measure import clean_ct_slices, ground_truth

MR_SLICE = "9894340694_04-16-1997-MRI_ABDOMEN_PELVIS_WWO_CONT-87318_15_000000-LIVER-PELVISHASTEAXIALP-65398_1-17.dcm"
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
WORDS = st.lists(st.text(ALNUM + "/:.-", min_size=1, max_size=8), min_size=1, max_size=3).map(" ".join)
# a label or value: >= 3 letters/digits, starting with two (the left margin the block is aligned on). A line that
# opens with one small lowercase letter and then punctuation ("s:: m0") is beyond the pass: the colons are too small
# to be glyphs, so the letter stands alone (under MIN_LETTERS) and the rest starts off the margin; OCR covers it.
LINES = WORDS.filter(lambda line: sum(ch.isalnum() for ch in line) >= 3 and line[:2].isalnum())


def _display(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
    arr, photometric = _decode(ds)
    return _render(_frames(arr, ds)[0], ds, photometric)


def _mr_slice(shared: Path) -> tuple[Path, list[tuple[int, int, int, int]]]:
    truth = {p.name: boxes for p, boxes in ground_truth(shared)}
    path = shared / "deid" / "burned_in_text_jsl" / MR_SLICE
    return path, [b for b in truth[MR_SLICE] if b[2] > b[0]]


def test_ink_lines_alone_find_the_text_the_detector_misses_on_the_noisy_mr_slice(shared: Path) -> None:
    path, boxes = _mr_slice(shared)
    blocks = text_blocks(read_ink(_display(path)), [])
    assert len(blocks) == 1
    noisy_part = [b for b in boxes if b[1] < 70]  # the 7 boxes over noise; the 4 over bright tissue need the detector
    assert len(noisy_part) == 7
    assert all(box_coverage(b, blocks) >= 0.5 for b in noisy_part), blocks


def test_mr_slice_is_cleaned_whole_and_nothing_outside_changes(shared: Path) -> None:
    path, boxes = _mr_slice(shared)
    ds = pydicom.dcmread(path)
    before = ds.pixel_array.astype(np.int64)
    outcome = scan_and_clean(ds, scan=True)
    assert outcome.status == "cleaned"
    regions = [tuple(r[1:]) for r in outcome.regions]
    assert [round(box_coverage(b, regions), 2) for b in boxes] == [1.0] * len(boxes)
    after = ds.pixel_array.astype(np.int64)
    outside = np.ones(before.shape, bool)
    for x0, y0, x1, y1 in regions:
        outside[y0:y1, x0:x1] = False
    assert np.array_equal(before[outside], after[outside]) and not np.array_equal(before, after)
    assert outside.mean() > 0.85, "the blanked block (with its margin) stays a small part of the image"
    left = _render(after, ds, "MONOCHROME2")
    assert not any(box_coverage(line, regions) > 0 for line in find_text_lines(left))


def test_no_clean_ct_slice_gives_an_ink_block(shared: Path) -> None:
    slices = clean_ct_slices(shared)
    assert len(slices) == 98
    found = {p.name: text_blocks(ink, []) for p in slices if (ink := read_ink(_display(p))).all_lines}
    assert not any(found.values()), found


def _noise(rng: np.random.Generator, height: int, width: int, level: int, spread: int) -> np.ndarray:
    return np.clip(rng.normal(level, spread, (height, width)), 0, 255).astype(np.uint8)


def _anatomy_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth blobs on a dark field, saturated inside like a windowed slice, with mild noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width))
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sy, sx = rng.uniform(5, height / 3), rng.uniform(5, width / 3)
        image += rng.uniform(80, 400) * np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@example(seed=0, side=160, font_size=14, lines=["000", "000", "000 :"], dark_ink=False, level=60, spread=0)  # a
# colon after merged digits, too small to be a glyph, once counted as clutter around the block (CI, hypothesis)
@given(
    seed=st.integers(0, 2**32 - 1),
    side=st.integers(160, 512),
    font_size=st.integers(7, 22),
    lines=st.lists(LINES, min_size=3, max_size=6),
    dark_ink=st.booleans(),
    level=st.integers(60, 190),
    spread=st.integers(0, 18),
)
def test_a_block_of_one_ink_text_over_noise_is_found(
    seed: int, side: int, font_size: int, lines: list[str], dark_ink: bool, level: int, spread: int
) -> None:
    pitch = int(font_size * 1.4)
    assume(max(map(len, lines)) * font_size * pitch * len(lines) <= 0.2 * side * side)  # a corner block, not a page
    assume(font_size >= 10 or not any(ch.islower() for ch in "".join(lines)))  # under 10 px: capitals and digits
    rng = np.random.default_rng(seed)
    image = Image.fromarray(_noise(rng, side, side, level, spread))
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # one ink value, no anti-aliasing: what annotation software burns in
    font = ImageFont.load_default(size=font_size)
    x, y = int(rng.integers(2, side // 3)), int(rng.integers(2, max(3, side - pitch * len(lines) - 2)))
    ink = 0 if dark_ink else 255
    for row, text in enumerate(lines):
        draw.text((x, y + row * pitch), text, fill=ink, font=font)
    pixels = np.asarray(image)
    text_layer = Image.new("L", image.size, 0)
    layer = ImageDraw.Draw(text_layer)
    layer.fontmode = "1"
    for row, text in enumerate(lines):
        layer.text((x, y + row * pitch), text, fill=255, font=font)
    drawn = np.asarray(text_layer) > 0
    blocks = text_blocks(read_ink(to_display(pixels, "MONOCHROME2")), [])
    covered = np.zeros(pixels.shape, bool)
    for x0, y0, x1, y1 in blocks:
        covered[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = True
    assert (covered & drawn).sum() >= 0.9 * drawn.sum(), (blocks, x, y)
    rows, cols = np.nonzero(drawn)
    near = np.zeros(pixels.shape, bool)
    near[max(0, rows.min() - pitch) : rows.max() + pitch, max(0, cols.min() - pitch) : cols.max() + pitch] = True
    assert not (covered & ~near).any(), "only the text and its surroundings are blanked"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), side=st.integers(96, 512), smooth=st.booleans(),
       level=st.integers(0, 255), spread=st.integers(0, 120))  # fmt: skip
def test_pure_noise_and_smooth_anatomy_give_no_block(
    seed: int, side: int, smooth: bool, level: int, spread: int
) -> None:
    rng = np.random.default_rng(seed)
    image = _anatomy_like(rng, side, side) if smooth else _noise(rng, side, side, level, spread)
    ink = read_ink(to_display(image, "MONOCHROME2"))  # the min-max rendering the pass always gets
    assert text_blocks(ink, []) == [], ink.all_lines


def test_leak_check_sees_ink_text_left_in_a_blanked_block(shared: Path, tmp_path: Path) -> None:
    path, _ = _mr_slice(shared)
    src = tmp_path / "in"
    src.mkdir()
    (src / "mr.dcm").write_bytes(path.read_bytes())
    record = run_deid(src, tmp_path / "out", scan_pixels=True).records[0]
    assert record.status == "written" and record.pixels["status"] == "cleaned"
    refresh_digests(tmp_path / "out")
    assert check_tree(src, tmp_path / "out", ocr=True).findings == []
    written = tmp_path / "out" / record.output
    ds = pydicom.dcmread(written)
    ds.PixelData = pydicom.dcmread(path).pixel_array.astype(ds.pixel_array.dtype).tobytes()  # the text put back
    ds.save_as(written)
    refresh_digests(tmp_path / "out")
    findings = check_tree(src, tmp_path / "out", ocr=True).findings
    tops = [int(re.search(r"box \d+,(\d+)-", f.location)[1]) for f in findings if f.kind == "burned-in text"]
    assert any(top < 70 for top in tops), [f.line() for f in findings]  # lines over noise: only the ink pass sees them
