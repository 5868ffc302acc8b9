"""Multi-organ training: partial-label (marginal) loss, organ labels from the generator, archive augmentations,
warm start from the liver model, and the locked real test CTs kept out of every manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.preprocess import hu_window as window
from medseg.train.config import load_config
from medseg.train.losses import marginal_dice_ce, merge_unlabelled
from medseg.train.manifest import digest_path, load_manifest
from medseg.train.robust import archive_clip, fov_cut, sharpen
from medseg.train.synth.appearance import AppearanceParams
from medseg.train.synth.generator import organ_label, synth_volume
from medseg.train.synth.prepare import cached_case
from medseg.train.synth.tissues import tissue_table

REPO = Path(__file__).resolve().parents[1]
ORGANS = ("liver", "spleen", "stomach", "kidney", "gallbladder", "pancreas", "heart")
# The real manual CT locked for every model 2.0 manifest, and the one trained on by abdomen_v4 only.
LOCKED = ("ct/radcttace_0697",)
TRAINED_BY_V4_ONLY = "ct/radcttace_1211"


@pytest.mark.parametrize(("dice_weight", "ce_weight"), [(0.0, 1.0), (0.25, 1.0), (1.0, 0.5)])
def test_marginal_loss_weights_match_monai_lambdas(dice_weight: float, ce_weight: float) -> None:
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 8, 10, 10, 10, generator=g), torch.randint(0, 8, (2, 1, 10, 10, 10), generator=g)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True,
                     lambda_dice=dice_weight, lambda_ce=ce_weight)(x, y)  # fmt: skip
    ours = marginal_dice_ce(x, y, torch.ones(2, 8, dtype=torch.bool), dice_weight=dice_weight, ce_weight=ce_weight)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_marginal_loss_is_dice_ce_when_every_class_is_labelled() -> None:
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 8, 10, 10, 10, generator=g), torch.randint(0, 8, (2, 1, 10, 10, 10), generator=g)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)(x, y)
    assert torch.allclose(marginal_dice_ce(x, y, torch.ones(2, 8, dtype=torch.bool)), ref, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_liver_only_case_is_indifferent_to_how_unlabelled_organs_share_background(seed: int) -> None:
    """Moving logit mass among background and unlabelled organs leaves the merged probabilities, so the loss, equal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 8, 6, 6, 6, generator=g)
    y = (torch.rand(1, 1, 6, 6, 6, generator=g) < 0.4).long()
    labelled = torch.zeros(1, 8, dtype=torch.bool)
    labelled[0, :2] = True
    shuffled = x.clone()
    shuffled[:, [0, 2, 3, 4, 5, 6, 7]] = x[:, [3, 5, 0, 7, 2, 6, 4]]
    assert torch.allclose(marginal_dice_ce(x, y, labelled), marginal_dice_ce(shuffled, y, labelled), atol=1e-5)
    merged = merge_unlabelled(torch.softmax(x, 1), labelled)
    assert torch.allclose(merged.sum(1), torch.ones(1, 6, 6, 6), atol=1e-5)
    assert torch.all(merged[:, 2:] == 0)


def test_partial_label_loss_does_not_punish_a_neighbour_organ_but_full_labels_do() -> None:
    """A spleen prediction on a liver-only case's background costs nothing; on a fully labelled case it does."""
    y = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    y[..., :2] = 1
    bg, spleen = torch.zeros(1, 8, 4, 4, 4), torch.zeros(1, 8, 4, 4, 4)
    for x in (bg, spleen):
        x[:, 1][y[:, 0] == 1] = 10.0
    bg[:, 0][y[:, 0] == 0] = 10.0
    spleen[:, 2][y[:, 0] == 0] = 10.0
    partial = torch.tensor([[True, True] + [False] * 6])
    full = torch.ones(1, 8, dtype=torch.bool)
    assert torch.isclose(marginal_dice_ce(spleen, y, partial), marginal_dice_ce(bg, y, partial), atol=1e-4)
    assert marginal_dice_ce(spleen, y, full) > marginal_dice_ce(bg, y, full) + 1.0


@pytest.fixture(scope="module")
def amos(shared: Path, tmp_path_factory: pytest.TempPathFactory):
    p = shared / "labels/amos/amos_0013.nii.gz"
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return cached_case(p, p.parent / "labels.json", (3.0, 3.0, 3.0), digest, tmp_path_factory.mktemp("cache"))


def test_generator_emits_every_organ_and_keeps_the_binary_liver_label(amos) -> None:
    s = synth_volume(amos, np.random.default_rng(3), AppearanceParams(p_random_intensity=0.0), ORGANS)
    ids = tissue_table().ids
    present = set(np.unique(s.label).tolist())
    assert present == set(range(8)), f"labels present: {present}"
    liver_only = synth_volume(amos, np.random.default_rng(3), AppearanceParams(p_random_intensity=0.0))
    assert np.array_equal(liver_only.label, (s.label == 1).astype(np.uint8))
    tissues = np.array([ids["kidney_left"], ids["kidney_right"], ids["heart_blood"], ids["liver_vessel"], 32])
    assert organ_label(tissues, ORGANS).tolist() == [4, 4, 7, 1, 0]
    assert np.median(s.image[s.label == 7]) > 30, "the heart must be rendered as soft tissue/blood"


def test_archive_clip_at_1024_is_invisible_after_the_model_window_but_a_narrow_window_is_not() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-3000, 3000, (20, 20, 20)).astype(np.float32)
    clipped = archive_clip(hu, rng, ((-1024.0, 1024.0),))
    assert clipped.min() == -1024 and clipped.max() == 1024
    assert np.array_equal(window(clipped, -200, 300), window(hu, -200, 300))
    narrow = archive_clip(hu, rng, ((-160.0, 240.0),))
    assert not np.array_equal(window(narrow, -200, 300), window(hu, -200, 300))


def test_fov_cut_blanks_one_end_of_the_patch_image_and_label() -> None:
    hu = np.full((8, 8, 40), 60.0, np.float32)
    lab = np.ones((8, 8, 40), np.uint8)
    out, olab = fov_cut(hu, lab, np.random.default_rng(1), (0.5, 0.5))
    kept = olab.any(axis=(0, 1))
    assert kept.sum() == 20 and (kept[:20].all() or kept[20:].all())
    assert np.all(out[:, :, ~kept] == -1024.0) and np.all(out[:, :, kept] == 60.0)
    assert hu.min() == 60.0, "the input must not be modified"


def test_sharpen_overshoots_at_edges_and_keeps_flat_regions() -> None:
    hu = np.zeros((24, 24, 24), np.float32)
    hu[12:] = 100.0
    out = sharpen(hu, np.random.default_rng(2), (1.0, 1.0))
    assert out.max() > 110.0 and out.min() < -10.0
    assert np.allclose(out[:6], 0.0, atol=1e-3) and np.allclose(out[-6:], 100.0, atol=1e-3)


def test_warm_start_keeps_the_liver_models_background_and_liver_logits_exactly() -> None:
    from medseg.models.network import build_network
    from medseg.train.loop import init_from

    cfg, _ = load_config(REPO / "configs/abdomen.yaml")
    assert cfg.organs == ORGANS
    net = build_network(cfg.network)
    init_from(net, Path(cfg.init_weights))
    old = build_network(load_config(REPO / "configs/liver.yaml")[0].network)
    weights = torch.load(REPO / "medseg/models/zoo/liver/weights.pt", weights_only=True)
    old.load_state_dict({k: v.float() for k, v in weights.items()})
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        new_logits, old_logits = net.eval()(x), old.eval()(x)
    assert torch.allclose(new_logits[:, :2], old_logits, atol=1e-4)
    assert new_logits[:, 2:].std() > 0.01, "new classes must not start dead"


def test_locked_real_manual_cts_are_in_no_training_manifest(shared: Path) -> None:
    """radcttace_0697 is in no training manifest at all, radcttace_1211 only in abdomen_v4 (CHAOS is trained on by
    abdomen_v3 and v4; each model's own locked set is checked in test_train_manifest.py)."""
    locked = {digest_path(shared / c / f) for c in LOCKED for f in ("image.nii.gz", "liver.nii.gz")}
    v4_only = {digest_path(shared / TRAINED_BY_V4_ONLY / f) for f in ("image.nii.gz", "liver.nii.gz")}
    seen_v4_only = []
    for path in (REPO / "data_manifests").glob("*.json"):
        manifest, _ = load_manifest(path)
        if manifest.name.endswith("_test_locked"):
            continue
        for e in manifest.entries:
            assert not set(e.sha256.values()) & locked, f"{path.name}: {e.case_id} is a locked test CT"
            assert not any(str(p).startswith(LOCKED) for p in (e.image, e.label) if p), f"{path.name}: {e.case_id}"
            if set(e.sha256.values()) & v4_only:
                seen_v4_only.append(manifest.name)
    assert seen_v4_only == ["abdomen_v4"]


REAL_TRAINING = {
    "abdomen_v3": ["totalseg_dicom_20sl", "chaos_ct_set3"],
    "abdomen_v4": ["totalseg_dicom_20sl", "chaos_ct_set3", "radcttace_1211"],
}


@pytest.mark.parametrize(("name", "real"), REAL_TRAINING.items())
def test_abdomen_manifest_holds_every_label_map_source(shared: Path, name: str, real: list[str]) -> None:
    manifest, _ = load_manifest(REPO / f"data_manifests/{name}.json")
    assert [e.case_id for e in manifest.split("train", "ct_pair")] == real
    maps = manifest.split("train", "label_map") + manifest.split("val", "label_map")
    assert len(maps) == 112
    assert sum(e.label.startswith("labels/flare22/") for e in maps) == 50
    assert [e.case_id for e in manifest.split("val", "ct_pair")] == ["totalseg_example_ct_sm"]


@pytest.mark.slow
def test_multi_organ_ci_config_trains_with_partial_labels_and_reports_every_organ(tmp_path: Path) -> None:
    """configs/abdomen_ci.yaml end to end: real liver-only patches and every archive augmentation switched on."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MEDSEG_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1", MEDSEG_AUDIT_DIR=str(tmp_path / "a"))
    medseg = Path(sys.executable).with_name("medseg")
    r = subprocess.run([str(medseg), "train", str(REPO / "configs/abdomen_ci.yaml"), "--out", str(tmp_path / "run")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["iteration"] == 6
    synth = next(v for k, v in last["organ_dice"].items() if k.startswith("synth_"))
    assert set(synth) == set(ORGANS), "every organ of the label map is scored on the synthetic validation volume"
    assert set(last["organ_dice"]["totalseg_example_ct_sm"]) == {"liver"}, "the real CT is scored on its liver only"


def test_an_organ_gets_card_figures_only_above_the_minimum_dice() -> None:
    """`metrics.organs` decides what may be served: spleen passes; pancreas (below 0.80), the kidney (0.87 on
    synthetic CT but 0.46 on the one real CT with its label) and the main organ do not."""
    from medseg.models.card import ModelCard
    from medseg.train.export import ORGAN_MIN_DICE, organ_metrics

    bench = {
        "synthetic_organ_dice": {
            "manifest": "abdomen_v3",
            "cases": {"a": {"liver": 0.95, "spleen": 0.9, "pancreas": 0.5, "kidney": 0.9},
                      "b": {"liver": 0.9, "spleen": 0.86, "kidney": 0.84}},
            "mean_dice": {"liver": 0.925, "spleen": 0.88, "pancreas": 0.5, "kidney": 0.87},
        },
        "totalseg_organ_dice_model_labels": {"spleen": 0.91, "kidney": 0.46},
    }
    organs = organ_metrics(bench, "liver")
    assert set(organs) == {"spleen"} and organs["spleen"]["cases"] == {"a": 0.9, "b": 0.86}
    assert organs["spleen"]["totalseg_example_dice_vs_model_labels"] == 0.91
    assert organs["spleen"]["mean_dice"] >= ORGAN_MIN_DICE > 0.5
    card = ModelCard.load(REPO / "medseg/models/zoo/liver/model_card.yaml")
    multi = card.model_copy(update={"labels": {0: "background", 1: "liver", 2: "spleen", 3: "pancreas"},
                                    "metrics": {**card.metrics, "organs": organs}})  # fmt: skip
    assert multi.validated_organs == ("liver", "spleen")


def test_the_cards_confidence_limit_comes_from_the_synthetic_side_of_the_bench() -> None:
    from medseg.errors import InvalidInputError
    from medseg.train.export import confidence_limit

    limit = confidence_limit({"threshold": 0.23456, "synthetic": [{}] * 12, "real": [{}] * 28})
    assert limit.max_uncertain_fraction == 0.2346 and "12 synthetic" in limit.chosen_on
    with pytest.raises(InvalidInputError):
        confidence_limit({"threshold": None, "synthetic": []})


@pytest.mark.parametrize("name", ["abdomen_stage4", "abdomen_stage5"])
def test_experiment_recipes_load_and_change_only_what_they_say(name: str) -> None:
    """Stages 4 and 5 start from the installed 2.1.0, keep stage 3's data, network, grid and other augmentations,
    and each switches on exactly one of the two factors tested (rate, budget and seed differ, as their headers say)."""
    stage3, _ = load_config(REPO / "configs/abdomen_stage3.yaml")
    cfg, _ = load_config(REPO / f"configs/{name}.yaml")
    assert cfg.init_weights == "medseg/models/zoo/abdomen-2.1/weights.pt" and (REPO / cfg.init_weights).is_file()
    assert cfg.data == stage3.data and cfg.network == stage3.network and cfg.spacing == stage3.spacing
    assert cfg.augment.model_copy(update={"anatomy": stage3.augment.anatomy}) == stage3.augment
    tested = {"abdomen_stage4": cfg.augment.anatomy.p_diaphragm > 0, "abdomen_stage5": cfg.loss.dice_weight == 0}
    assert tested[name]
    assert (cfg.augment.anatomy.p_diaphragm > 0) != (cfg.loss.dice_weight == 0)
    assert stage3.loss.dice_weight == 1.0 and stage3.augment.anatomy.p_diaphragm == 0


def test_stage_6_is_stage_5_with_more_real_ct_only() -> None:
    """Stage 6 tests one factor against stage 5 (the default 2.2.0): the share of real CT in a batch, 0.5 -> 0.8."""
    stage5, _ = load_config(REPO / "configs/abdomen_stage5.yaml")
    stage6, _ = load_config(REPO / "configs/abdomen_stage6.yaml")
    assert (stage5.data.real_fraction, stage6.data.real_fraction) == (0.5, 0.8)
    same = stage6.model_copy(update={"version": stage5.version, "data": stage5.data})
    assert same == stage5


def test_stage_7_is_stage_5_with_real_patches_centred_anywhere_only() -> None:
    """Stage 7 tests one factor against stage 5: real-CT patches centred anywhere in the body instead of on the liver
    two times in three; synthetic patches keep pos_fraction 0.67."""
    stage5, _ = load_config(REPO / "configs/abdomen_stage5.yaml")
    stage7, _ = load_config(REPO / "configs/abdomen_stage7.yaml")
    assert stage5.data.real_positive_fraction == 0.67 and stage7.data.real_positive_fraction == 0.0
    assert stage7.data.pos_fraction == stage5.data.pos_fraction
    same = stage7.model_copy(update={"version": stage5.version, "data": stage5.data})
    assert same == stage5


def _phantom_patches(size: int, liver: slice, patch: int, n: int, data: dict, augment: dict | None = None) -> list:
    """`n` real-CT training samples (stage-5 recipe, real CT only) from a phantom: a cube of body at 40 HU with a
    cubic liver at `liver` on every axis; `data` and `augment` override the recipe's fields."""
    from medseg.train.data import CaseSets, PatchStream
    from medseg.train.realdata import RealCase

    hu = np.full((size,) * 3, 40.0, np.float32)
    lab = np.zeros(hu.shape, np.uint8)
    lab[liver, liver, liver] = 1
    cfg, _ = load_config(REPO / "configs/abdomen_stage5.yaml")
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"patch_size": (patch,) * 3, "real_fraction": 1.0, **data}),
        "augment": cfg.augment.model_copy(update=augment or {}),
    })  # fmt: skip
    stream = PatchStream(CaseSets([], [RealCase("phantom", hu, lab, np.eye(4))]), cfg, seed=3)
    return [stream.sample(np.random.default_rng([3, i])) for i in range(n)]


def _liver_patch_share(real_pos_fraction: float | None, n: int = 40) -> tuple[float, list[float]]:
    """Share of real-CT patches that contain liver, and their mean liver fraction, from a phantom whose liver is a
    small block in one corner of a large body."""
    samples = _phantom_patches(64, slice(4, 14), 16, n, {"pos_fraction": 1.0, "real_pos_fraction": real_pos_fraction})
    labels = [s["label"].numpy() > 0 for s in samples]
    return float(np.mean([m.any() for m in labels])), [float(m.mean()) for m in labels]


def test_real_pos_fraction_decides_where_real_patches_are_centred() -> None:
    """Unset, real patches follow pos_fraction (all centred on the liver here; augmentation such as a cut field of view
    may still remove it); at 0 they are centred anywhere in the body, so most miss a liver that fills 0.4 % of it."""
    on_liver, shares_on = _liver_patch_share(None)
    anywhere, shares_any = _liver_patch_share(0.0)
    assert on_liver >= 0.9
    assert anywhere < 0.5
    assert np.mean(shares_any) < np.mean(shares_on) / 3


def test_stage_8_is_stage_5_with_the_real_liver_shifted_only() -> None:
    """Stage 8 tests one factor against stage 5: the liver of half the real-CT patches shifted by -40..+40 HU."""
    stage5, _ = load_config(REPO / "configs/abdomen_stage5.yaml")
    stage8, _ = load_config(REPO / "configs/abdomen_stage8.yaml")
    assert stage5.augment.p_real_liver_shift == 0.0
    assert (stage8.augment.p_real_liver_shift, stage8.augment.real_liver_shift_hu) == (0.5, (-40.0, 40.0))
    augment = stage8.augment.model_copy(update={"p_real_liver_shift": 0.0})
    same = stage8.model_copy(update={"version": stage5.version, "augment": augment})
    assert same == stage5


def test_stage_9_is_stage_5_on_a_faster_host() -> None:
    """Stage 9 changes nothing in the recipe (only the version): what differs is the host's speed."""
    stage5, _ = load_config(REPO / "configs/abdomen_stage5.yaml")
    stage9, _ = load_config(REPO / "configs/abdomen_stage9.yaml")
    assert stage9.version == "2.3.0"
    assert stage9.model_copy(update={"version": stage5.version}) == stage5


def test_stage_10_is_stage_9_with_patches_as_large_as_the_inference_window() -> None:
    stage9, _ = load_config(REPO / "configs/abdomen_stage9.yaml")
    stage10, _ = load_config(REPO / "configs/abdomen_stage10.yaml")
    assert stage10.data.patch_size == stage10.validation.roi_size == (96, 96, 96)
    assert stage10.model_copy(update={"data": stage10.data.model_copy(update={"patch_size": stage9.data.patch_size})}) \
        == stage9


def test_one_stage_recipe_is_stage_5_from_liver_1_0_0_in_one_run() -> None:
    """The one-stage recipe differs from stage 5 only in what makes it one run from the start of stage 1: warm start
    from liver 1.0.0, stage 1's peak rate and warm-up, a 120-minute budget (within #12's 150), validation every 600
    iterations, its own seed and version."""
    stage1, _ = load_config(REPO / "configs/abdomen.yaml")
    stage5, _ = load_config(REPO / "configs/abdomen_stage5.yaml")
    one, _ = load_config(REPO / "configs/abdomen_onestage.yaml")
    assert one.init_weights == stage1.init_weights == "medseg/models/zoo/liver/weights.pt"
    assert (one.optim.lr, one.optim.warmup_iterations) == (stage1.optim.lr, stage1.optim.warmup_iterations)
    assert one.run.time_budget_min is not None and one.run.time_budget_min <= 150
    assert (one.loss.dice_weight, one.loss.ce_weight) == (0.0, 1.0)
    same = one.model_copy(update={
        "version": stage5.version,
        "init_weights": stage5.init_weights,
        "optim": stage5.optim,
        "run": one.run.model_copy(update={"time_budget_min": stage5.run.time_budget_min,
                                          "val_every": stage5.run.val_every, "seed": stage5.run.seed}),
    })  # fmt: skip
    assert same == stage5


def test_shift_organ_hu_moves_the_organ_only_and_fades_at_its_edge() -> None:
    from medseg.train.data import shift_organ_hu

    hu = np.full((24, 24, 24), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[6:18, 6:18, 6:18] = True
    out = shift_organ_hu(hu, mask, -35.0)
    assert np.allclose(out[9:15, 9:15, 9:15], 5.0, atol=1e-3)
    assert np.allclose(out[:3], 40.0) and np.allclose(out[:, :, 21:], 40.0)
    edge = out[5:19, 12, 12]
    assert np.all(np.diff(edge[:7]) <= 1e-4) and 5.0 < edge[1] < 40.0


def _liver_contrast(p_shift: float) -> float:
    """Mean windowed intensity inside minus outside the phantom's liver over real-CT patches with the liver shift
    fixed at +60 HU and applied with probability `p_shift`."""
    samples = _phantom_patches(48, slice(14, 34), 24, 8, {"pos_fraction": 1.0},
                               {"p_real_liver_shift": p_shift, "real_liver_shift_hu": (60.0, 60.0)})  # fmt: skip
    diffs = []
    for s in samples:
        img, liver = s["image"].numpy()[0], s["label"].numpy()[0] > 0
        body = ~liver & (img > 0.2)  # not the -1024 HU padding beyond the phantom
        if liver.any() and body.any():
            diffs.append(float(img[liver].mean() - img[body].mean()))
    return float(np.mean(diffs))


def test_real_liver_shift_changes_the_liver_contrast_only_when_on() -> None:
    """Off (stage 5), the phantom's liver is as bright as the body around it; on, about 60 HU brighter (0.12 of the
    500 HU window, less the faded edge)."""
    assert abs(_liver_contrast(0.0)) < 0.02
    assert 0.07 < _liver_contrast(1.0) < 0.13
