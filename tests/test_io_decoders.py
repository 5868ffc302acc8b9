"""Every pixel decoder path, on pydicom's/pydicom-data's real files and on compressed copies of a real series."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from medseg.errors import InvalidInputError
from medseg.io import read_image
from medseg.io.dicom_pixels import decode

PYD = "dicom/pydicom"
PYDD = "dicom/pydicom_data"
MR_PHANTOM = "dicom/mr_series_penn_prisma_phantom"

LOSSLESS_TWINS = [
    (f"{PYD}/MR_small.dcm", f"{PYD}/MR_small_RLE.dcm"),
    (f"{PYD}/MR_small.dcm", f"{PYD}/MR_small_bigendian.dcm"),
    (f"{PYD}/MR_small.dcm", f"{PYD}/MR_small_implicit.dcm"),
    (f"{PYD}/MR_small.dcm", f"{PYD}/MR_small_jp2klossless.dcm"),
    (f"{PYD}/MR_small.dcm", f"{PYD}/MR_small_jpeg_ls_lossless.dcm"),
    (f"{PYDD}/emri_small.dcm", f"{PYDD}/emri_small_RLE.dcm"),
    (f"{PYDD}/emri_small.dcm", f"{PYDD}/emri_small_jpeg_2k_lossless.dcm"),
    (f"{PYDD}/emri_small.dcm", f"{PYDD}/emri_small_jpeg_ls_lossless.dcm"),
]
# greyscale files whose decoding must agree with pydicom's reference decoders (pylibjpeg / numpy)
SINGLE_FILES = [
    (f"{PYDD}/693_UNCI.dcm", 0),  # BitsStored 14 < BitsAllocated 16, signed
    (f"{PYDD}/693_J2KR.dcm", 0),  # not the same pixels as 693_UNCI, despite the name
    (f"{PYD}/JPGExtended.dcm", 0),
    (f"{PYDD}/JPEG-LL.dcm", 0),
    (f"{PYDD}/JPGLosslessP14SV1_1s_1f_8b.dcm", 0),
    (f"{PYD}/JPEGLSNearLossless_08.dcm", 0),
    (f"{PYD}/JPEGLSNearLossless_16.dcm", 0),
    (f"{PYD}/image_dfl.dcm", 0),
    (f"{PYD}/JPEG2000.dcm", 2),
    (f"{PYD}/693_J2KI.dcm", 2),
    (f"{PYDD}/MR2_J2KI.dcm", 2),
    (f"{PYDD}/MR2_J2KR.dcm", 0),
    (f"{PYD}/J2K_pixelrep_mismatch.dcm", 0),
    (f"{PYDD}/explicit_VR-UN.dcm", 0),
    (f"{PYDD}/bad_sequence.dcm", 0),
    (f"{PYDD}/RG3_J2KI.dcm", 2),
]


def load(shared: Path, rel: str) -> np.ndarray:
    path = shared / rel
    return decode(pydicom.dcmread(path), path)


@pytest.mark.parametrize(("reference", "compressed"), LOSSLESS_TWINS)
def test_lossless_transfer_syntaxes_equal_the_uncompressed_twin(shared: Path, reference: str, compressed: str) -> None:
    ref = load(shared, reference)
    got = load(shared, compressed)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(("rel", "tolerance"), SINGLE_FILES)
def test_decoders_agree_with_pydicom_reference(shared: Path, rel: str, tolerance: int) -> None:
    ds = pydicom.dcmread(shared / rel)
    ref = np.asarray(
        pixel_array(ds, decoding_plugin="pylibjpeg" if "JPEG" in ds.file_meta.TransferSyntaxUID.name else "")
    )
    got = decode(ds, shared / rel)
    assert got.shape == (1, *ref.shape[-2:])
    assert np.max(np.abs(got[0].astype(np.int64) - ref.astype(np.int64))) <= tolerance


@pytest.mark.parametrize(
    ("rel", "fragment"),
    [
        (f"{PYD}/MR_truncated.dcm", "truncated pixel data"),
        (f"{PYD}/JPEG2000-embedded-sequence-delimiter.dcm", "cannot decode pixel data"),
    ],
)
def test_broken_pixel_data_raises_invalid_input(shared: Path, rel: str, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        load(shared, rel)


def test_truncated_enhanced_file_is_reported_as_truncated(shared: Path) -> None:
    with pytest.raises(InvalidInputError, match="truncated"):
        read_image(shared / f"{PYDD}/emri_small_jpeg_2k_lossless_too_short.dcm")


def test_enhanced_mr_without_plane_geometry_is_refused(shared: Path) -> None:
    with pytest.raises(InvalidInputError, match="no patient geometry"):
        read_image(shared / f"{PYDD}/emri_small.dcm")


@pytest.mark.parametrize(
    "rel", [f"{PYDD}/eCT_Supplemental.dcm", "dicom/seg/dcmqi/segmentations/23x38x3/multiframe/mf.dcm"]
)
def test_enhanced_multiframe_matches_highdicom_volume(shared: Path, rel: str) -> None:
    vol = read_image(shared / rel)
    ref = hd.imread(shared / rel).get_volume()
    ijk = np.indices(vol.shape).reshape(3, -1).T
    world = vol.geometry.index_to_world(ijk)
    idx = (np.c_[world, np.ones(len(world))] @ np.linalg.inv(ref.affine).T)[:, :3]
    assert np.max(np.abs(idx - np.round(idx))) < 1e-3
    r = np.round(idx).astype(int)
    np.testing.assert_allclose(vol.array[tuple(ijk.T)], ref.array[tuple(r.T)], rtol=1e-6)


@pytest.mark.parametrize("size", ["23x38x3", "24x38x3"])
def test_legacy_converted_multiframe_equals_its_single_frame_series(shared: Path, size: str) -> None:
    base = shared / "dicom/seg/dcmqi/segmentations" / size
    classic = read_image(base / "image")
    multi = read_image(base / "multiframe" / "mf.dcm")
    assert multi.geometry.same_grid(classic.geometry, 1e-3)
    np.testing.assert_array_equal(multi.array, classic.array)


def _recode(src: Path, dest: Path, syntax: pydicom.uid.UID) -> None:
    shutil.copytree(src, dest)
    for path in dest.iterdir():
        ds = pydicom.dcmread(path)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
        ds.save_as(path)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian])
def test_compressed_copies_of_a_real_series_read_identically(shared: Path, tmp_path: Path, syntax: str) -> None:
    original = read_image(shared / MR_PHANTOM)
    _recode(shared / MR_PHANTOM, tmp_path / "mr", pydicom.uid.UID(syntax))
    assert pydicom.dcmread(next((tmp_path / "mr").iterdir())).file_meta.TransferSyntaxUID == syntax
    recoded = read_image(tmp_path / "mr")
    assert recoded.geometry.same_grid(original.geometry, 1e-6)
    np.testing.assert_array_equal(recoded.array, original.array)


def test_jpeg_baseline_series(shared: Path, tmp_path: Path) -> None:
    """8-bit JPEG baseline (lossy) copy of the real MR phantom: read like pydicom decodes each slice."""
    shutil.copytree(shared / MR_PHANTOM, tmp_path / "mr")
    expected = {}
    for path in (tmp_path / "mr").iterdir():
        ds = pydicom.dcmread(path)
        arr8 = (ds.pixel_array.astype(np.float64) / max(1, ds.pixel_array.max()) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr8, mode="L").save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.save_as(path)
        expected[path.name] = np.asarray(pixel_array(pydicom.dcmread(path)))
        assert np.mean(np.abs(expected[path.name].astype(int) - arr8.astype(int))) < 4
    vol = read_image(tmp_path / "mr")
    assert vol.array.dtype == np.uint8
    for k, path in enumerate(vol.meta.source_files):
        np.testing.assert_array_equal(vol.array[:, :, k].T, expected[path.name])
