"""The fast SEG path writes the same SEG as the original one: headers kept from the input read instead of re-read,
frames transposed in cubes. Compared element by element with the SEG built from every re-read header."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medseg.infer.cases import discover_cases
from medseg.io import read_image, read_nifti
from medseg.writers.seg import SegAlgorithm, build_seg, k_major_frames, memoise_multiframe_check

ALGO = SegAlgorithm("medseg-test-liver", "1.2.3", "medseg 0.1.0")
GENERATED = ("SOPInstanceUID", "SeriesInstanceUID", "InstanceCreationDate", "InstanceCreationTime", "ContentDate",
             "ContentTime", "DimensionOrganizationSequence")  # fmt: skip


@given(
    labels=arrays(np.uint8, st.tuples(*[st.integers(1, 23)] * 3), elements=st.sampled_from([0, 0, 0, 1, 2, 255])),
    block=st.integers(1, 9),
)
@settings(max_examples=60, deadline=None)
def test_k_major_frames_is_the_plain_transpose(labels, block):
    expected = np.ascontiguousarray(labels.transpose(2, 1, 0))
    frames = k_major_frames(labels, block)
    assert frames.dtype == np.uint8 and frames.flags.c_contiguous
    np.testing.assert_array_equal(frames, expected)


def test_k_major_frames_casts_like_astype():
    labels = np.arange(-3, 61, dtype=np.int64).reshape(4, 4, 4)
    np.testing.assert_array_equal(k_major_frames(labels, 3), labels.transpose(2, 1, 0).astype(np.uint8))


def _comparable(seg):
    """The SEG with the values made fresh on every build (UIDs, creation times) removed."""
    ds = seg.copy()
    for keyword in GENERATED:
        if keyword in ds:
            delattr(ds, keyword)
    for item in ds.DimensionIndexSequence:
        del item.DimensionOrganizationUID
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    return ds


@pytest.fixture(scope="module")
def chaos_two_segments(shared):
    volume = read_image(shared / "ct/chaos_ct_sample/dicom")
    liver = read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz").array.astype(np.uint8)
    labels = liver.copy()
    labels[: labels.shape[0] // 2][labels[: labels.shape[0] // 2] == 1] = 2  # two segments, both non-empty
    assert set(np.unique(labels)) == {0, 1, 2}
    return volume, labels


def test_seg_from_kept_headers_equals_seg_from_reread_headers(chaos_two_segments):
    volume, labels = chaos_two_segments
    assert len(volume.meta.source_slices) == volume.shape[2]
    names = {1: "liver", 2: "spleen"}
    fast_notes: list[str] = []
    slow_notes: list[str] = []
    fast = build_seg(labels, volume, names, ALGO, "FORCED modality", fast_notes)
    reread = replace(volume, meta=replace(volume.meta, source_slices=()))
    slow = build_seg(labels, reread, names, ALGO, "FORCED modality", slow_notes)
    assert fast.PixelData == slow.PixelData and fast.NumberOfFrames == slow.NumberOfFrames > 0
    a, b = _comparable(fast), _comparable(slow)
    assert sorted(e.keyword for e in a) == sorted(e.keyword for e in b)
    for elem in b:
        assert a[elem.tag] == elem, elem.keyword
    assert fast_notes == slow_notes


def test_per_source_frame_pixels_equal_the_label_map(chaos_two_segments):
    """Decoded per segment and per referenced source instance, the SEG is the label map exactly."""
    import highdicom as hd
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    volume, labels = chaos_two_segments
    seg = build_seg(labels, volume, {1: "liver", 2: "spleen"}, ALGO)
    buffer = DicomBytesIO()
    seg.save_as(buffer)
    buffer.seek(0)
    back = hd.seg.Segmentation.from_dataset(dcmread(buffer))
    uids = [s.sop_instance_uid for s in volume.meta.source_slices]
    for segment in (1, 2):
        got = back.get_pixels_by_source_instance(uids, segment_numbers=[segment], skip_overlap_checks=True)
        np.testing.assert_array_equal(got[..., 0], (labels == segment).transpose(2, 1, 0))


def test_cases_keep_the_slice_headers(shared):
    cases, _ = discover_cases(shared / "ct/chaos_ct_sample/dicom")
    volume = cases[0].load()
    slices = volume.meta.source_slices
    assert len(slices) == volume.shape[2] == len(volume.meta.source_files)
    z = [float(s.position.split("\\")[2]) for s in slices]
    world_z = volume.geometry.index_to_world(np.array([[0, 0, k] for k in range(volume.shape[2])]))[:, 2]
    np.testing.assert_allclose(z, world_z, atol=1e-3)


def test_memoised_multiframe_check_answers_like_highdicom_for_every_sop_class() -> None:
    import highdicom.utils as hd_utils
    from highdicom._standard_utils import get_sop_class_iod_map, is_multiframe_image
    from pydicom.dataset import Dataset

    memoise_multiframe_check()
    memoise_multiframe_check()  # idempotent: one wrapper, not a wrapper of a wrapper
    assert hd_utils.is_multiframe_image.__wrapped__ is is_multiframe_image
    answers = set()
    for uid in get_sop_class_iod_map():
        ds = Dataset()
        ds.SOPClassUID = uid
        try:
            expected = is_multiframe_image(ds)
        except KeyError:  # an IOD highdicom's tables lack: the memoised check fails the same way
            with pytest.raises(KeyError):
                hd_utils.is_multiframe_image(ds)
            continue
        assert hd_utils.is_multiframe_image(ds) == hd_utils.is_multiframe_image(ds) == expected, uid
        answers.add(expected)
    assert answers == {True, False}


def test_seg_is_the_same_with_highdicoms_own_multiframe_check(chaos_two_segments, monkeypatch):
    import highdicom.utils as hd_utils

    volume, labels = chaos_two_segments
    names = {1: "liver", 2: "spleen"}
    memoise_multiframe_check()
    fast = build_seg(labels, volume, names, ALGO)
    monkeypatch.setattr(hd_utils, "is_multiframe_image", hd_utils.is_multiframe_image.__wrapped__)
    monkeypatch.setattr("medseg.writers.seg.memoise_multiframe_check", lambda: None)
    plain = build_seg(labels, volume, names, ALGO)
    assert fast.PixelData == plain.PixelData
    a, b = _comparable(fast), _comparable(plain)
    assert sorted(e.keyword for e in a) == sorted(e.keyword for e in b)
    for elem in b:
        assert a[elem.tag] == elem, elem.keyword


def test_prewarm_runs_once_and_leaves_highdicom_ready() -> None:
    import sys

    import medseg.writers.seg as seg

    seg.prewarm_in_background()
    seg.prewarm_in_background()
    assert len(seg._PREWARM) == 1
    seg._PREWARM[0].join(timeout=60)
    assert not seg._PREWARM[0].is_alive() and "highdicom" in sys.modules
    import highdicom.utils as hd_utils

    assert getattr(hd_utils.is_multiframe_image, "medseg_memoised", False)


def _highdicom_own_table(monkeypatch) -> object:
    """Put highdicom's own module-table function back in every highdicom module (undone after the test)."""
    import sys

    import highdicom._standard_utils as standard

    own = getattr(standard.get_module_attribute_map, "__wrapped__", standard.get_module_attribute_map)
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "highdicom" and hasattr(module, "get_module_attribute_map"):
            monkeypatch.setattr(module, "get_module_attribute_map", own)
    return own


def test_module_table_answers_every_question_like_highdicoms_table(monkeypatch, tmp_path) -> None:
    from medseg.writers.seg_tables import PRELOADED_SOP_CLASSES, install_module_table

    own = _highdicom_own_table(monkeypatch)
    whole = own()
    table = install_module_table(tmp_path)
    assert install_module_table(tmp_path) is table  # once per process
    cached = list((tmp_path / "highdicom").glob("modules-*.json"))
    assert len(cached) == 1 and 20 < len(table._preloaded) < 60, len(table._preloaded)
    assert table["patient"] == whole["patient"] and "segmentation-image" in table
    assert not table.whole_table_loaded  # questions about preloaded modules never load the 22 MB table
    assert all(table[k] == whole[k] for k in table._preloaded)
    assert "no-such-module" not in table and table.whole_table_loaded
    assert len(table) == len(whole) and list(table) == list(whole)
    assert all(table[k] == whole[k] for k in whole)
    from pydicom.uid import UID

    assert [UID(u).name for u in PRELOADED_SOP_CLASSES] == ["CT Image Storage", "Segmentation Storage"]


def test_seg_is_the_same_with_highdicoms_own_module_table(chaos_two_segments, monkeypatch, tmp_path) -> None:
    """A CT SEG built with the preloaded table equals the one built with highdicom's own, and it asked about no
    module outside the preloaded ones (the speed-up holds)."""
    import highdicom._standard_utils as standard


    volume, labels = chaos_two_segments
    names = {1: "liver", 2: "spleen"}
    own = _highdicom_own_table(monkeypatch)
    plain = build_seg(labels, volume, names, ALGO)
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    fast = build_seg(labels, volume, names, ALGO)  # build_seg installs the table
    table = standard.get_module_attribute_map()
    assert standard.get_module_attribute_map.__wrapped__ is own
    assert not table.whole_table_loaded
    assert fast.PixelData == plain.PixelData
    a, b = _comparable(fast), _comparable(plain)
    assert sorted(e.keyword for e in a) == sorted(e.keyword for e in b)
    for elem in b:
        assert a[elem.tag] == elem, elem.keyword


def test_a_damaged_or_unwritable_cached_copy_is_cut_again(monkeypatch, tmp_path) -> None:
    from medseg.writers.seg_tables import preloaded_modules

    own = _highdicom_own_table(monkeypatch)
    first = preloaded_modules(own, tmp_path)
    (cached,) = (tmp_path / "highdicom").glob("modules-*.json")
    cached.write_text("{not json")
    assert preloaded_modules(own, tmp_path) == first
    assert json.loads(cached.read_text()) == first  # rewritten whole
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    assert preloaded_modules(own, blocked) == first  # the cache cannot be written: still the same modules
