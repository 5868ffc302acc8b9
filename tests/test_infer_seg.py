"""DICOM SEG: valid (dciodvfy), coded, and every frame lands where its source slice is, whatever the order/orientation.

Peer bugs tested: mirrored SEG with negated orientation (TotalSegmentator PR #598) and frames matched by list
order instead of position (highdicom #330; chaos z decreases with file name).
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

import numpy as np
import pytest
from infer_fixtures import seg_frames_in_world, write_negated_series

from medseg.errors import ProcessingError
from medseg.io import read_image, read_nifti
from medseg.writers.seg import SegAlgorithm, SegUnavailable, build_seg, write_seg

ALGO = SegAlgorithm("medseg-test-liver", "1.2.3", "medseg 0.1.0")


def assert_seg_matches(seg_path, ref_volume, ref_labels):
    """Every SEG frame pixel equals the reference label at the same world position; all labelled voxels covered."""
    covered = 0
    for world, pixels, segment in seg_frames_in_world(seg_path):
        idx = np.rint(ref_volume.geometry.world_to_index(world.reshape(-1, 3))).astype(int)
        assert (idx >= 0).all() and (idx < np.asarray(ref_volume.shape)).all()
        expected = ref_labels[idx[:, 0], idx[:, 1], idx[:, 2]] == segment
        np.testing.assert_array_equal(pixels.reshape(-1).astype(bool), expected)
        covered += int(expected.sum())
    assert covered == int((ref_labels > 0).sum()) > 0


def dciodvfy_errors(path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def chaos(shared):
    volume = read_image(shared / "ct/chaos_ct_sample/dicom")
    liver = read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz")
    assert volume.geometry.same_grid(liver.geometry)
    return volume, liver.array.astype(np.uint8)


def test_seg_on_reverse_ordered_real_series_is_valid_and_round_trips(chaos, tmp_path):
    import highdicom as hd

    volume, liver = chaos
    names = [f.name for f in volume.meta.source_files]
    assert names == sorted(names, reverse=True)  # k order is the reverse of file-name order
    path = write_seg(liver, volume, {1: "liver"}, ALGO, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    assert_seg_matches(path, volume, liver)
    seg = hd.seg.segread(path)
    desc = seg.SegmentSequence[0]
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert desc.SegmentAlgorithmType == "AUTOMATIC"
    assert desc.SegmentAlgorithmName == ALGO.name
    algo = desc.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == (ALGO.name, ALGO.version)
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    import pydicom

    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.meta.source_files]
    assert refs == set(uids)
    by_uid = seg.get_pixels_by_source_instance(uids, combine_segments=True)  # highdicom matches by source UID
    np.testing.assert_array_equal(by_uid, liver.transpose(2, 1, 0))


def test_seg_with_negated_orientation_is_not_mirrored(chaos, shared, tmp_path):
    volume, liver = chaos
    files = list(volume.meta.source_files)
    ks = range(30, 54)
    write_negated_series(files, tmp_path / "negated", ks)
    negated = read_image(tmp_path / "negated")
    assert np.allclose(negated.geometry.direction_matrix[:, :2], -volume.geometry.direction_matrix[:, :2])
    labels = np.ascontiguousarray(liver[::-1, ::-1, ks.start : ks.stop])
    np.testing.assert_array_equal(negated.array, volume.array[::-1, ::-1, ks.start : ks.stop])
    path = write_seg(labels, negated, {1: "liver"}, ALGO, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    sub = np.zeros_like(liver)
    sub[:, :, ks.start : ks.stop] = liver[:, :, ks.start : ks.stop]
    assert_seg_matches(path, volume, sub)


@pytest.mark.parametrize("kept_slices", [True, False])
def test_sources_out_of_place_are_refused(chaos, kept_slices):
    volume, liver = chaos
    meta = volume.meta
    slices = meta.source_slices[::-1] if kept_slices else ()
    shuffled = replace(meta, source_files=meta.source_files[::-1], source_slices=slices)
    with pytest.raises(ProcessingError, match="misplaced SEG"):
        build_seg(liver, replace(volume, meta=shuffled), {1: "liver"}, ALGO)


def test_source_files_not_the_ones_read_are_refused(chaos):
    volume, liver = chaos
    shuffled = replace(volume.meta, source_files=volume.meta.source_files[::-1])
    with pytest.raises(ProcessingError, match="changed since it was read"):
        build_seg(liver, replace(volume, meta=shuffled), {1: "liver"}, ALGO)


def test_series_without_uids_gets_no_seg(shared, tmp_path):
    volume = read_image(shared / "dicom/ct_series_totalsegmentator")
    labels = read_nifti(shared / "dicom/ct_series_totalsegmentator_refseg/example_seg_dicom.nii.gz").array == 5
    with pytest.raises(SegUnavailable, match="empty Study/Series Instance UIDs"):
        write_seg(labels.astype(np.uint8), volume, {1: "liver"}, ALGO, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_empty_mask_and_existing_output(chaos, tmp_path):
    volume, liver = chaos
    with pytest.raises(SegUnavailable, match="empty"):
        write_seg(np.zeros_like(liver), volume, {1: "liver"}, ALGO, tmp_path / "a.dcm")
    (tmp_path / "b.dcm").write_bytes(b"keep")
    with pytest.raises(Exception, match="already exists"):
        write_seg(liver, volume, {1: "liver"}, ALGO, tmp_path / "b.dcm")
    assert (tmp_path / "b.dcm").read_bytes() == b"keep"


def test_seg_on_enhanced_multiframe_ct_matches_frames_by_position(chaos, tmp_path):
    """An enhanced CT made from real slices in file-name order (z decreasing): each SEG frame lands by position."""
    import highdicom as hd
    import pydicom

    volume, liver = chaos
    by_name = sorted(volume.meta.source_files)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in by_name[20:44]],
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    multi = read_image(tmp_path / "enhanced.dcm")
    ks = slice(volume.shape[2] - 44, volume.shape[2] - 20)  # names 20..43 are slices 57..34 (z decreases with name)
    np.testing.assert_array_equal(multi.array, volume.array[:, :, ks])
    path = write_seg(np.ascontiguousarray(liver[:, :, ks]), multi, {1: "liver"}, ALGO, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    sub = np.zeros_like(liver)
    sub[:, :, ks] = liver[:, :, ks]
    assert_seg_matches(path, volume, sub)


def test_source_without_frame_of_reference_gets_no_seg(shared, tmp_path):
    volume = read_image(shared / "dicom/dicom2nifti/philips_enhanced/anatomical/001/IM-0001-0170-0001.dcm")
    labels = (volume.array > np.percentile(volume.array, 80)).astype(np.uint8)
    with pytest.raises(SegUnavailable, match="Frame of Reference"):
        write_seg(labels, volume, {1: "liver"}, ALGO, tmp_path / "seg.dcm")


@pytest.mark.parametrize("thickness", ["absent", "empty"])
def test_a_source_without_slice_thickness_still_gets_a_valid_seg(shared, tmp_path, thickness: str) -> None:
    """SliceThickness is Type 2 in CT (absent or empty is legal) but Type 1C in the SEG's pixel measures: absent,
    highdicom could not build the SEG (no SEG written); empty, the SEG failed dciodvfy. The slice spacing is given."""
    import pydicom

    src = tmp_path / "in"
    src.mkdir()
    for f in sorted((shared / "ct/chaos_ct_sample/dicom").glob("*.dcm"))[30:42]:
        ds = pydicom.dcmread(f)
        if thickness == "absent":
            del ds.SliceThickness
        else:
            ds.SliceThickness = None
        ds.save_as(src / f.name)
    volume = read_image(src)
    labels = np.zeros(volume.shape, np.uint8)
    labels[200:300, 200:300, 3:9] = 1
    notes: list[str] = []
    path = tmp_path / "seg.dcm"
    seg = build_seg(labels, volume, {1: "liver"}, ALGO, notes=notes)
    seg.save_as(path)
    assert dciodvfy_errors(path) == []
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(volume.spacing[2])
    assert any("SliceThickness is absent or empty" in n for n in notes)
    assert_seg_matches(path, volume, labels)
