"""Synthetic CT generator: labels preserved, plausible HU, determinism, no left/right flips, spatial identity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.errors import InvalidInputError
from medseg.train.synth.appearance import AppearanceParams
from medseg.train.synth.generator import synth_patch, synth_volume
from medseg.train.synth.prepare import cached_case, prepare_label_map
from medseg.train.synth.spatial import SpatialParams, sampling_grid, warp
from medseg.train.synth.tissues import source_lut, tissue_table

SPACING = (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def amos(shared: Path, tmp_path_factory: pytest.TempPathFactory):
    p = shared / "labels/amos/amos_0013.nii.gz"
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return cached_case(p, p.parent / "labels.json", SPACING, digest, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def btcv(shared: Path):
    p = shared / "labels/btcv_8organ/label0001.nii.gz"
    return prepare_label_map(p, p.parent / "labels.json", SPACING)


def test_every_source_vocabulary_maps_to_known_classes(shared: Path) -> None:
    for name in ("word_test", "btcv_8organ", "amos"):
        lut = source_lut(shared / "labels" / name / "labels.json")
        assert lut[0] == 0
        assert tissue_table().ids["liver"] in lut


def test_unknown_organ_name_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "labels.json"
    bad.write_text('{"0": "background", "1": "liver", "2": "brain"}')
    with pytest.raises(InvalidInputError, match="brain"):
        source_lut(bad)


def test_prepared_case_is_ras_with_anatomy_on_the_expected_sides(amos, btcv) -> None:
    ids = tissue_table().ids
    for case in (amos, btcv):
        liver = np.argwhere(case.classes == ids["liver"]).mean(0)
        spleen = np.argwhere(case.classes == ids["spleen"]).mean(0)
        kidneys = np.argwhere(np.isin(case.classes, [ids["kidney_left"], ids["kidney_right"]])).mean(0)
        assert liver[0] > spleen[0], "liver must lie on the patient's right (+i in RAS)"
        assert kidneys[1] < liver[1], "kidneys lie posterior to the liver (-j in RAS)"
        assert case.spine[:, 1].mean() < liver[1]


def test_volume_keeps_the_liver_label_exactly_and_has_plausible_hu(amos) -> None:
    ids = tissue_table().ids
    s = synth_volume(amos, np.random.default_rng(0), AppearanceParams(p_random_intensity=0.0))
    liver = amos.classes == ids["liver"]
    assert np.array_equal(s.label.astype(bool), liver)
    assert s.image.shape == amos.classes.shape
    lo, hi = tissue_table().prior(ids["liver"], s.phase)
    med = float(np.median(s.image[liver]))
    assert lo - 60 < med < hi + 60
    outside = ~amos.fov | (amos.hull_dist > 80)
    assert np.median(s.image[outside]) < -900
    assert s.image.max() > 300, "bone must be present"


def test_generation_is_deterministic_for_a_seed(amos) -> None:
    a = synth_patch(amos, np.random.default_rng(7), (48, 48, 48), True, SpatialParams(), AppearanceParams())
    b = synth_patch(amos, np.random.default_rng(7), (48, 48, 48), True, SpatialParams(), AppearanceParams())
    c = synth_patch(amos, np.random.default_rng(8), (48, 48, 48), True, SpatialParams(), AppearanceParams())
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)


def test_positive_patches_contain_liver(amos) -> None:
    rng = np.random.default_rng(3)
    for _ in range(4):
        s = synth_patch(amos, rng, (64, 64, 64), True, SpatialParams(), AppearanceParams(p_random_intensity=0.0))
        assert s.label.any()
        assert set(np.unique(s.label)) <= {0, 1}
        assert s.image.shape == (64, 64, 64) and s.image.dtype == np.float32


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_spatial_augmentation_never_flips_an_axis(seed: int) -> None:
    grid = sampling_grid((16, 16, 16), (24, 24, 24), np.random.default_rng(seed), SpatialParams())[0]
    for axis in range(3):
        step = np.diff(grid[..., 2 - axis].numpy(), axis=axis)
        assert np.median(step) > 0, f"axis {axis} flipped"


@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(*[st.integers(4, 12)] * 3), seed=st.integers(0, 2**16))
def test_identity_grid_reproduces_the_input(shape: tuple[int, int, int], seed: int) -> None:
    vol = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    grid = sampling_grid(shape, shape, np.random.default_rng(seed), None)
    assert np.allclose(warp(vol, grid, "bilinear", 0.0), vol, atol=1e-4)
    assert np.array_equal(warp(vol, grid, "nearest", 0.0), vol)


def test_heart_sits_left_and_anterior_on_the_dome_and_is_never_liver(amos) -> None:
    """The heart that bordered the liver dome on real CT (and was called liver) is in the synthetic anatomy."""
    from medseg.train.synth.anatomy import PAD, build_tissues
    from medseg.train.synth.generator import cut_region

    ids = tissue_table().ids
    assert PAD not in ids.values(), "a tissue id must not collide with the out-of-view marker"
    reg = cut_region(amos, np.zeros(3, int), amos.classes.shape)
    found = 0
    for seed in range(6):
        t = build_tissues(reg, np.random.default_rng(seed))
        heart = np.isin(t, [ids["heart_muscle"], ids["heart_blood"]])
        if not heart.any():
            continue
        found += 1
        liver = amos.classes == ids["liver"]
        assert not (heart & liver).any()
        h, lv = np.argwhere(heart).mean(0), np.argwhere(liver).mean(0)
        assert h[0] < lv[0], "heart on the patient's left of the liver (-i in RAS)"
        assert h[1] > amos.spine[:, 1].mean(), "heart anterior to the spine"
        assert h[2] > lv[2], "heart above the liver's centre"
    assert found >= 3


def test_table_lies_under_the_back_and_arms_beside_the_body_outside_every_organ(amos) -> None:
    """Real archives show the scanner table and sometimes the arms; the generator draws both outside the body."""
    from medseg.train.synth.anatomy import _arms, _table, build_tissues
    from medseg.train.synth.appearance import render
    from medseg.train.synth.generator import cut_region

    ids = tissue_table().ids
    table_ids = [ids["table_shell"], ids["table_core"], ids["table_pad"]]
    reg = cut_region(amos, np.array([-40, -60, 0]), np.array(amos.classes.shape) + np.array([80, 120, 0]))
    shape = reg.classes.shape
    body = np.zeros(shape, bool)
    body[60:-60, 80:-40] = True
    for seed in range(4):
        rng = np.random.default_rng(seed)
        t = np.full(shape, ids["outside_air"], np.uint8)
        _table(t, reg, rng, body, ~body)
        table = np.isin(t, table_ids)
        assert table.any() and not (table & body).any()
        assert np.nonzero(table.any(axis=(0, 2)))[0].max() < 80, "under the back (-y), not beside or above it"
        _arms(t, reg, rng, body, ~body)
        arm = np.isin(t, [ids["muscle"], ids["subcut_fat"], ids["bone_cortex"], ids["bone_marrow"]])
        cols = np.nonzero(arm.any(axis=(1, 2)))[0]
        assert cols.size and not (arm & body).any()
        assert cols.min() < 60 and cols.max() >= shape[0] - 60, "one arm on each side"
        assert np.isin(t, [ids["bone_cortex"]]).any(), "each arm holds a humerus"
    shell, core = t == ids["table_shell"], t == ids["table_core"]
    assert shell.any() and core.any()
    image, _ = render(t, np.random.default_rng(0), AppearanceParams(p_random_intensity=0.0))
    assert image[shell].mean() > image[core].mean()
    volumes = [build_tissues(reg, np.random.default_rng(s)) for s in range(10)]
    drawn = [np.isin(t, table_ids).any() for t in volumes]
    assert 1 <= sum(drawn) <= 9, "the table is drawn in some volumes, not all"
    assert not any((np.isin(t, table_ids) & (reg.classes > 0)).any() for t in volumes)


def test_diaphragm_is_a_thin_muscle_sheet_on_the_upper_liver_and_never_touches_an_organ(amos) -> None:
    """The diaphragm that real CT shows between the liver and the wall or lung: muscle within two voxels of the
    liver, only above its lower quarter, replacing filler tissue only (organs, heart and bone stay)."""
    from scipy import ndimage

    from medseg.train.synth.anatomy import AnatomyParams, _diaphragm, build_tissues
    from medseg.train.synth.generator import cut_region

    ids = tissue_table().ids
    t = np.full((40, 40, 40), ids["soft_tissue"], np.uint8)
    t[10:30, 10:30, 10:30] = ids["liver"]
    t[30:34, 10:30, 10:30] = ids["kidney_right"]
    t[10:30, 10:30, 30:33] = ids["lung"]
    t[10:30, 6:10, 10:30] = ids["bone_cortex"]
    organ = np.isin(t, [ids["liver"], ids["kidney_right"]])
    t[30:34, 10:30, 20:30] = ids["bowel_gas"]  # gas inside an organ of the label map (as in the stomach)
    before = t.copy()
    _diaphragm(t, np.random.default_rng(0), free=~organ)
    sheet = (t == ids["muscle"]) & (before != ids["muscle"])
    near = ndimage.binary_dilation(before == ids["liver"], iterations=2)
    assert sheet.any() and not (sheet & ~near).any()
    assert not sheet[:, :, :15].any(), "nothing on the liver's lower quarter"
    assert np.isin(before[sheet], [ids["soft_tissue"], ids["lung"]]).all()
    kept = organ | (before == ids["bone_cortex"])
    assert np.array_equal(t[kept], before[kept])
    assert sheet[:, :, 30].sum() >= 0.9 * 20 * 20, "it covers the dome where the lung meets the liver"

    reg = cut_region(amos, np.zeros(3, int), amos.classes.shape)
    organs = reg.classes > 0
    drawn = 0
    for seed in range(2):
        with_sheet = build_tissues(reg, np.random.default_rng(seed), AnatomyParams(p_diaphragm=1.0))
        plain = build_tissues(reg, np.random.default_rng(seed), AnatomyParams(p_diaphragm=0.0))
        assert np.array_equal(np.isin(with_sheet, [ids["heart_muscle"], ids["heart_blood"]]),
                              np.isin(plain, [ids["heart_muscle"], ids["heart_blood"]])), "the heart stays"  # fmt: skip
        liverish = np.isin(with_sheet, [ids["liver"], ids["liver_vessel"], ids["liver_lesion"]])
        assert np.array_equal(liverish, reg.classes == ids["liver"]), "the liver label is unchanged"
        assert np.array_equal(with_sheet[organs & ~liverish], plain[organs & ~liverish]), "other organs stay"
        drawn += int(((with_sheet == ids["muscle"]) & (plain != ids["muscle"])).sum() > 0)
    assert drawn == 2
