"""medseg.metrics against DeepMind's `surface-distance` (PyPI 0.1) to 1e-6, and its empty-mask rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import surface_distance as deepmind
from hypothesis import given, settings
from hypothesis import strategies as st
from surface_distance import lookup_tables

from medseg.errors import ProcessingError
from medseg.io import read_nifti
from medseg.metrics import aggregate, bootstrap_mean_ci, image_diagonal_mm, organ_metrics, surface_distances
from medseg.metrics.surface import TABLE, surface_area_table

pytestmark = pytest.mark.req("REQ-020")


def reference(ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float], tol: float) -> dict[str, float]:
    """The metrics as DeepMind's package computes them (ASSD = area-weighted mean over both surfaces)."""
    d = deepmind.compute_surface_distances(ref, pred, spacing)
    a_r, a_p = d["surfel_areas_gt"], d["surfel_areas_pred"]
    assd = (np.sum(d["distances_gt_to_pred"] * a_r) + np.sum(d["distances_pred_to_gt"] * a_p)) / (a_r.sum() + a_p.sum())
    return {
        "hd95_mm": deepmind.compute_robust_hausdorff(d, 95),
        "nsd": deepmind.compute_surface_dice_at_tolerance(d, tol),
        "assd_mm": assd,
        "dice": deepmind.compute_dice_coefficient(ref, pred),
    }


def test_normals_table_is_the_reference_table() -> None:
    assert json.loads(TABLE.read_text())["normals"] == lookup_tables._NEIGHBOUR_CODE_TO_NORMALS
    for spacing in [(1.0, 1.0, 1.0), (0.73, 0.73, 2.0), (0.8, 1.6, 5.0)]:
        expected = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(surface_area_table(spacing), expected, rtol=0, atol=1e-12)


blobs = st.tuples(
    st.integers(0, 2**32 - 1),
    st.tuples(*[st.sampled_from([0.5, 0.73, 1.0, 1.56, 2.5, 5.0])] * 3),
    st.floats(0.5, 6.0),
)


@settings(max_examples=40, deadline=None)
@given(blobs)
def test_matches_deepmind_on_random_masks_with_anisotropic_spacing(case) -> None:
    seed, spacing, tol = case
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(6, 20, size=3))
    ref = rng.random(shape) < 0.35
    pred = np.roll(ref, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 3))) ^ (rng.random(shape) < 0.05)
    if not ref.any() or not pred.any():
        return
    ours = organ_metrics(ref, pred, spacing, tol)
    for key, value in reference(ref, pred, spacing, tol).items():
        assert getattr(ours, key) == pytest.approx(value, abs=1e-6), key


def test_matches_deepmind_on_the_real_chaos_liver_shifted(shared) -> None:
    label = read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz")
    ref = label.array > 0
    pred = np.roll(ref, 4, axis=0) & ~np.roll(ref, -1, axis=2)
    spacing = tuple(float(s) for s in label.spacing)
    assert spacing[2] != spacing[0]  # anisotropic: 0.73 x 0.73 x 2.0 mm
    ours = organ_metrics(ref, pred, spacing, 2.0)
    expected = reference(ref, pred, spacing, 2.0)
    for key, value in expected.items():
        assert getattr(ours, key) == pytest.approx(value, abs=1e-6), key
    assert ours.volume_ref_ml == pytest.approx(1417.5, abs=0.5)  # SOURCES-ct.md: 1417.5 ml
    tp = np.count_nonzero(ref & pred)
    assert ours.sensitivity == pytest.approx(tp / ref.sum()) and ours.precision == pytest.approx(tp / pred.sum())
    assert ours.iou == pytest.approx(tp / np.count_nonzero(ref | pred))


def test_sorted_distances_match_deepmind_arrays() -> None:
    rng = np.random.default_rng(7)
    ref = rng.random((12, 14, 9)) < 0.4
    pred = rng.random((12, 14, 9)) < 0.4
    ours = surface_distances(ref, pred, (0.8, 1.6, 5.0))
    d = deepmind.compute_surface_distances(ref, pred, (0.8, 1.6, 5.0))
    np.testing.assert_allclose(ours.ref_to_pred, d["distances_gt_to_pred"], atol=1e-9)
    np.testing.assert_allclose(ours.pred_areas, d["surfel_areas_pred"], atol=1e-9)


def test_a_missed_organ_scores_zero_and_the_diagonal_never_nan(shared) -> None:
    label = read_nifti(shared / "ct/radcttace_0697/liver.nii.gz")
    ref = label.array > 0
    spacing = tuple(float(s) for s in label.spacing)
    miss = organ_metrics(ref, np.zeros_like(ref), spacing, 3.0)
    diagonal = image_diagonal_mm(ref.shape, spacing)
    assert (miss.dice, miss.nsd, miss.iou, miss.sensitivity, miss.fn_rate) == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert miss.hd95_mm == miss.assd_mm == pytest.approx(diagonal) and miss.outcome == "miss"
    assert miss.volume_diff_pct == -100.0
    assert not any(isinstance(v, float) and np.isnan(v) for v in miss.to_json().values())
    fp = organ_metrics(np.zeros_like(ref), ref, spacing, 3.0)
    assert fp.dice == 0.0 and fp.hd95_mm == pytest.approx(diagonal) and fp.outcome == "false_positive"
    tn = organ_metrics(np.zeros_like(ref), np.zeros_like(ref), spacing, 3.0)
    assert tn.dice == 1.0 and tn.hd95_mm == 0.0


def test_a_miss_lowers_the_mean_instead_of_dropping_out() -> None:
    dice = [0.93, 0.95, 0.91, 0.0]
    agg = aggregate(dice, ["a", "b", "c", "d"], seed=1)
    assert agg.mean == pytest.approx(np.mean(dice)) and agg.ci_low < 0.5
    with pytest.raises(ProcessingError, match="NaN"):
        aggregate([0.93, float("nan"), 0.91], ["a", "b", "c"], seed=1)
    with pytest.raises(ProcessingError, match="None"):
        aggregate([0.93, None, 0.91], ["a", "b", "c"], seed=1)  # type: ignore[list-item]


def test_bootstrap_is_seeded_and_resamples_patients_not_cases() -> None:
    values = [0.9, 0.9, 0.9, 0.5, 0.95]
    patients = ["p1", "p1", "p1", "p2", "p3"]
    assert bootstrap_mean_ci(values, patients, seed=3) == bootstrap_mean_ci(values, patients, seed=3)
    one_patient = bootstrap_mean_ci([0.8, 0.9, 0.7], ["p", "p", "p"], seed=3)
    assert one_patient == pytest.approx((0.8, 0.8))  # one patient: every resample holds all three cases
    agg = aggregate(values, patients, seed=3)
    assert agg.n == 5 and agg.n_patients == 3 and agg.interpretable
    assert agg.ci_low <= agg.mean <= agg.ci_high
    assert not aggregate([0.9, 0.8], ["a", "b"], seed=3).interpretable


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12), st.integers(0, 1000))
def test_ci_lies_within_the_range_of_the_values(values, seed) -> None:
    agg = aggregate(values, [f"p{i}" for i in range(len(values))], seed=seed, resamples=200)
    assert min(values) - 1e-12 <= agg.ci_low <= agg.ci_high <= max(values) + 1e-12


def test_training_evaluation_scores_a_miss_with_the_same_rules(shared) -> None:
    from medseg.train.evaluate import score

    label = read_nifti(shared / "ct/radcttace_0697/liver.nii.gz")
    ref = (label.array > 0).astype(np.uint8)
    spacing = tuple(float(s) for s in label.spacing)
    miss = score(np.zeros_like(ref), ref, spacing, "radcttace_0697", "manual")
    assert miss.dice == 0.0 and miss.hd95_mm == pytest.approx(image_diagonal_mm(ref.shape, spacing))
    hit = score(ref, ref, spacing, "radcttace_0697", "manual")
    assert hit.dice == 1.0 and hit.hd95_mm == 0.0
