"""QC flags on real CT and on deliberately altered copies of it (no model needed)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medseg.infer.qc import check_input, check_result
from medseg.io import read_image, read_nifti
from medseg.models.card import ModelCard
from medseg.writers.summary import organ_stats

CARD = ModelCard(
    name="qc",
    version="0",
    organ="liver",
    labels={0: "background", 1: "liver"},
    intended_use="tests",
    spacing=(3.0, 3.0, 3.0),
    weights={"sha256": "0" * 64},
)


@pytest.fixture(scope="module")
def chaos(shared):
    return read_image(shared / "ct/chaos_ct_sample/dicom"), read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz")


def codes(flags) -> set[str]:
    return {f.code for f in flags}


def with_extra(volume, **extra):
    return replace(volume, meta=replace(volume.meta, extra={**volume.meta.extra, **extra}))


def test_real_abdominal_ct_raises_no_input_flag(chaos):
    assert check_input(chaos[0], CARD) == []


@pytest.mark.parametrize(
    ("alter", "expected"),
    [
        (lambda v: v.with_array((v.array.astype(np.int32) + 1024).astype(np.int16)), "not_hu"),
        (lambda v: v.with_array(np.clip((v.array + 160) / 400 * 255, 0, 255).astype(np.uint8)), "not_hu"),
        (lambda v: with_extra(v, slice_thickness=6.0), "thick_slices"),
        (lambda v: with_extra(v, slice_thickness=1.0), "slice_gaps"),
        (lambda v: with_extra(v, body_part_examined="HEAD"), "body_part"),
        (lambda v: with_extra(v, body_part_examined="HEADNECK"), "body_part"),  # these four passed a review
        (lambda v: with_extra(v, body_part_examined="SINUS"), "body_part"),
        (lambda v: with_extra(v, body_part_examined="ORBIT"), "body_part"),
        (lambda v: with_extra(v, body_part_examined="TMJ"), "body_part"),
        (lambda v: replace(v, meta=replace(v.meta, modality="MR")), "modality"),
    ],
)
def test_altered_inputs_are_flagged(chaos, alter, expected):
    flags = check_input(alter(chaos[0]), CARD)
    assert expected in codes(flags)
    assert all(f.reason and f.stage == "input" for f in flags)


def test_short_and_narrow_fields_of_view(chaos):
    from medseg.io import Volume

    v = chaos[0]
    short = Volume(v.array[:, :, :30], replace(v.geometry, shape=(512, 512, 30)), v.meta)
    assert "fov_short" in codes(check_input(short, CARD))
    narrow = Volume(np.ascontiguousarray(v.array[:200, :200]), replace(v.geometry, shape=(200, 200, 78)), v.meta)
    assert "fov_small" in codes(check_input(narrow, CARD))


@pytest.mark.parametrize("slices", [1, 2, 3])
def test_one_or_two_slices_are_refused_as_not_a_volume(chaos, slices):
    """A single image (a key image or screenshot exported as CT) is not what a 3D model is for: refused, like MR;
    three slices are a (very short) volume, flagged fov_short only."""
    from medseg.io import Volume

    v = chaos[0]
    cut = Volume(np.ascontiguousarray(v.array[:, :, 40 : 40 + slices]), replace(v.geometry, shape=(512, 512, slices)),
                 v.meta)  # fmt: skip
    flags = {f.code: f for f in check_input(cut, CARD)}
    assert ("not_a_volume" in flags) == (slices < 3) and "fov_short" in flags
    if slices < 3:
        assert flags["not_a_volume"].refuses and f"{slices} slice(s)" in flags["not_a_volume"].reason


def test_result_flags_follow_the_label_map(chaos):
    volume, truth = chaos
    liver = truth.array.astype(np.uint8)
    stats = organ_stats(liver, 1, volume)
    assert stats["volume_ml"] == pytest.approx(1417.5, abs=0.5)
    flags = check_result("liver", stats, volume.shape, CARD, volume.geometry.direction_matrix)
    assert codes(flags) == {"organ_truncated"} and "inferior edge" in flags[0].reason  # caudal cut (SOURCES-ct.md)
    small = np.zeros_like(liver)
    small[200:240, 200:240, 30:40] = 1
    assert "volume_implausible" in codes(check_result("liver", organ_stats(small, 1, volume), volume.shape, CARD))
    air = np.zeros_like(liver)
    air[:40, :40, 30:40] = 1
    assert "organ_intensity" in codes(check_result("spleen", organ_stats(air, 1, volume), volume.shape, CARD))
    assert codes(check_result("liver", organ_stats(air, 1, volume), volume.shape, CARD)) == {"organ_not_found"}
    empty = organ_stats(np.zeros_like(liver), 1, volume)
    assert codes(check_result("liver", empty, volume.shape, CARD)) == {"organ_not_found"}


def test_a_multi_organ_cards_volume_range_is_its_main_organs_only(chaos) -> None:
    """The card's liver range once flagged a normal 123 ml spleen as implausible (seen with model 2.0.0)."""
    volume, _ = chaos
    labels = {0: "background", 1: "liver", 2: "spleen"}
    card = CARD.model_copy(update={"labels": labels, "volume_range_ml": (600, 4500)})
    spleen = np.zeros(volume.shape, np.uint8)
    spleen[300:370, 300:370, 30:54] = 1
    stats = organ_stats(spleen, 1, volume)
    assert 60 < stats["volume_ml"] < 200
    assert "volume_implausible" not in codes(check_result("spleen", stats, volume.shape, card))
    assert "volume_implausible" in codes(check_result("liver", stats, volume.shape, card))
    small = np.zeros(volume.shape, np.uint8)  # about 20 ml: above spleen's organ_not_found (5 ml), below 40 ml
    small[300:330, 300:330, 30:51] = 1
    assert "volume_implausible" in codes(check_result("spleen", organ_stats(small, 1, volume), volume.shape, card))
    tiny = np.zeros(volume.shape, np.uint8)
    tiny[300:305, 300:305, 30:32] = 1
    assert codes(check_result("spleen", organ_stats(tiny, 1, volume), volume.shape, card)) == {"organ_not_found"}


@pytest.mark.parametrize("slices_first", [False, True], ids=["slices-last", "slices-first"])
def test_coarse_slices_are_flagged_whichever_array_axis_holds_them(shared, tmp_path, slices_first) -> None:
    """The same 6 mm CT stored axial-last and slices-first: a reviewer saw only the first flagged."""
    import nibabel as nib

    img = nib.load(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    data, affine = np.asanyarray(img.dataobj), img.affine.copy()
    affine[:3, 2] *= 6.0 / np.linalg.norm(affine[:3, 2])
    if slices_first:
        data, affine = np.moveaxis(data, 2, 0), affine[:, [2, 0, 1, 3]]
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "ct.nii.gz")
    volume = read_nifti(tmp_path / "ct.nii.gz")
    assert {f.code: f.reason for f in check_input(volume, CARD)}.get("slice_spacing") == "slice spacing 6 mm > 5.0 mm"
