"""Burned-in text: detected in every frame, blanked with a margin, checked again; what cannot be cleaned is
quarantined; clean CT is left alone."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.deid.check import check_tree
from medseg.deid.conformance import box_coverage
from tests.deid_fixtures import run_deid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from deid_measure import clean_ct_slices, false_positive_slices, ground_truth, recall

JSL_XR = "292821506_07-13-2013-XR_CHEST_AP_PORTABLE_for_Douglas_Davidson-46198_1001_000000-37718_1-1"


def _output(out: Path, record) -> pydicom.Dataset:
    return pydicom.dcmread(out / record.output)


def test_burned_in_text_blanked_recorded_and_verified(shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    chosen = [shared / "deid" / "burned_in_text_jsl" / f"{JSL_XR}.dcm",
              shared / "deid" / "deid_data" / "ultrasounds" / "GREYSCALE_IMAGE.dcm"]  # fmt: skip
    for f in chosen:
        (src / f.name).write_bytes(f.read_bytes())
    result = run_deid(src, tmp_path / "out", scan_pixels=True)
    assert [r.status for r in result.records] == ["written", "written"]
    truth = {p.name: boxes for p, boxes in ground_truth(shared)}
    for path, record in zip(sorted(src.iterdir()), result.records, strict=True):
        out = _output(tmp_path / "out", record)
        assert out.BurnedInAnnotation == "NO" and record.pixels["status"] == "cleaned"
        assert "113101" in {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
        regions = [tuple(r[1:]) for r in record.pixels["regions"]]
        covered = [box_coverage(b, regions) >= 0.5 for b in truth[path.name]]
        assert sum(covered) / len(covered) >= 0.9, (path.name, covered)
        before = pydicom.dcmread(path).pixel_array.astype(np.int64)
        after = out.pixel_array.astype(np.int64)
        mask = np.ones(before.shape[:2], bool)
        for x0, y0, x1, y1 in regions:
            mask[y0:y1, x0:x1] = False
        assert np.array_equal(before[mask], after[mask]), "pixels outside the blanked regions are unchanged"
        assert not np.array_equal(before, after)
    check = check_tree(src, tmp_path / "out", ocr=True)
    assert check.ocr_files == 2 and check.findings == [], [f.line() for f in check.findings]


def test_clean_ct_is_left_untouched(shared: Path, tmp_path: Path) -> None:
    slices = clean_ct_slices(shared)[::20]
    flagged, _ = false_positive_slices(slices)
    assert flagged == 0
    src = tmp_path / "in"
    src.mkdir()
    (src / "ct.dcm").write_bytes(slices[0].read_bytes())
    record = run_deid(src, tmp_path / "out", scan_pixels=True).records[0]
    assert record.pixels["status"] == "clean" and record.pixels["regions"] == []
    out = _output(tmp_path / "out", record)
    assert out.PixelData == pydicom.dcmread(slices[0]).PixelData and "BurnedInAnnotation" not in out


def _multiframe_with_text(path: Path, text_frames: tuple[int, ...]) -> None:
    frames = np.full((3, 256, 320), 20, np.uint8)
    font = ImageFont.load_default(size=28)
    for index in text_frames:
        image = Image.fromarray(frames[index])
        ImageDraw.Draw(image).text((20, 100), "DOE JOHN 1961", fill=250, font=font)
        frames[index] = np.asarray(image)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Byte Secondary Capture
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "OT", "DOE^JOHN", "12345678"
    ds.set_pixel_data(frames, "MONOCHROME2", 8, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def test_every_frame_is_scanned(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _multiframe_with_text(src / "mf.dcm", (1, 2))
    record = run_deid(src, tmp_path / "out", scan_pixels=True).records[0]
    assert record.pixels["frames"] == 3 and record.pixels["status"] == "cleaned"
    assert {r[0] for r in record.pixels["regions"]} == {1, 2}
    out = _output(tmp_path / "out", record).pixel_array
    assert out.shape == (3, 256, 320) and out[0].max() == 20 and out[1].max() < 250 and out[2].max() < 250


def test_what_cannot_be_cleaned_goes_to_quarantine(shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "lossy.dcm").write_bytes((shared / "dicom" / "pydicom" / "JPEG-lossy.dcm").read_bytes())  # undecodable
    flagged = pydicom.dcmread(shared / "dicom" / "pydicom" / "CT_small.dcm")
    flagged.BurnedInAnnotation = "YES"  # says text is there, none is found: not trusted either way
    flagged.save_as(src / "flagged.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_deid(src, tmp_path / "out", scan_pixels=True)
    reasons = {r.status: r.reason for r in result.records}
    assert [r.status for r in result.records] == ["quarantined", "quarantined"]
    assert all(r.output.startswith("quarantine/") for r in result.records)
    assert any("decoded" in r.reason for r in result.records) and any("YES" in r.reason for r in result.records)
    check = check_tree(src, tmp_path / "out", ocr=False)
    assert check.quarantined == 2 and check.files_checked == 0, reasons
    manifest = json.loads((tmp_path / "out" / "deid-manifest.json").read_text())
    assert manifest["counts"] == {"quarantined": 2}


@pytest.mark.slow
def test_recall_on_all_ground_truth_boxes_and_no_false_positive_on_clean_ct(shared: Path) -> None:
    measured = recall(shared)
    assert measured.boxes == 141
    assert measured.found / measured.boxes >= 0.99, measured.missed
    flagged, seconds = false_positive_slices(clean_ct_slices(shared)[::4])
    assert flagged == 0 and len(seconds) == 25


@pytest.mark.parametrize("ink", [2193, 1050])
def test_one_line_of_text_on_a_ct_blanks_that_line_not_the_image(shared: Path, tmp_path: Path, ink: int) -> None:
    """A CT slice with one line of text in its corner (white, or grey inside a soft-tissue window). The check after
    blanking used to re-window the image without its brightest part (the text) and the detector then saw the whole
    frame as one text box, so the whole slice was blanked and released as 'cleaned'."""
    src = tmp_path / "in"
    src.mkdir()
    ds = pydicom.dcmread(clean_ct_slices(shared)[10])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    before = ds.pixel_array.astype(np.int32)
    mask = Image.new("L", before.shape[::-1], 0)
    ImageDraw.Draw(mask).text((10, 10), "DOE JOHN 987654321", fill=255, font=ImageFont.load_default(size=16))
    burned = before.copy()
    burned[np.asarray(mask) > 127] = ink
    ds.PixelData = burned.astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(src / "ct.dcm", enforce_file_format=True)
    record = run_deid(src, tmp_path / "out", scan_pixels=True).records[0]
    assert record.status == "written" and record.pixels["status"] == "cleaned", record.pixels
    after = _output(tmp_path / "out", record).pixel_array.astype(np.int32)
    changed = after != burned
    assert changed.mean() < 0.05, f"{changed.mean():.1%} of the slice changed"
    text = np.asarray(mask) > 127
    assert not (after[text] == ink).any(), "the text itself is blanked"
    assert np.array_equal(after[60:, :], before[60:, :]), "the anatomy below the text line is untouched"


def test_an_image_that_is_mostly_text_is_quarantined_not_released_blank(tmp_path: Path) -> None:
    """Blanking more than half of a frame leaves nothing to use: the file goes to quarantine with the reason."""
    from medseg.deid.pixels import scan_and_clean

    image = Image.fromarray(np.full((256, 320), 20, np.uint8))
    draw = ImageDraw.Draw(image)
    for line in range(8):
        draw.text((4, 2 + 31 * line), "DOE JOHN 1961 MRN 4242", fill=250, font=ImageFont.load_default(size=30))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.7", "OT"
    ds.set_pixel_data(np.asarray(image), "MONOCHROME2", 8, generate_instance_uid=False)
    outcome = scan_and_clean(ds, scan=True)
    assert outcome.status == "quarantine" and "review this image by hand" in str(outcome.reason)
    assert not outcome.rewritten
