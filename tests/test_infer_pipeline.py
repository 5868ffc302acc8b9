"""The pipeline puts labels back on the exact input grid, whatever the orientation, axis order or obliquity.

A stand-in model with a known answer is used: the real chaos liver (manual label) is made the only voxels above
200 HU, and the stand-in marks voxels above that. Any mismatch between the way in (RAS, model spacing) and the
way back (input grid) moves or mirrors the liver and fails the Dice check (TotalSegmentator #598/#610 class bugs).
"""

from __future__ import annotations

import numpy as np
import pytest
from infer_fixtures import intensity_network

from medseg.infer.predict import predict_labels
from medseg.io import Volume, read_image, read_nifti
from medseg.models.card import ModelCard
from medseg.writers.summary import organ_stats


def card(spacing=(3.0, 3.0, 3.0), roi=(64, 64, 64)) -> ModelCard:
    return ModelCard(
        name="stand-in",
        version="0",
        organ="liver",
        labels={0: "background", 1: "liver"},
        intended_use="tests",
        spacing=spacing,
        roi_size=roi,
        weights={"sha256": "0" * 64},
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture(scope="module")
def oracle_ct(shared):
    """Chaos CT (downsampled in-plane for speed) where only the manually labelled liver is above 200 HU."""
    ct = read_image(shared / "ct/chaos_ct_sample/image.nii.gz")
    liver = read_nifti(shared / "ct/chaos_ct_sample/liver.nii.gz").array > 0
    hu = np.minimum(ct.array.astype(np.float32), 100.0)
    hu[liver] = 280.0
    sp = ct.spacing
    return hu[::2, ::2], liver[::2, ::2], (sp[0] * 2, sp[1] * 2, sp[2]), ct.geometry.origin


VARIANTS = {
    "as stored": (lambda a: a, np.eye(3)),
    "rows and columns negated": (lambda a: a[::-1, ::-1], np.diag([-1.0, -1.0, 1.0])),
    "i and j swapped, k reversed": (
        lambda a: a.transpose(1, 0, 2)[:, :, ::-1],
        np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]]),
    ),
    "oblique 20/10 degrees": (lambda a: a, rotation(20, 10)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_labels_land_on_the_input_grid(oracle_ct, variant):
    hu, liver, spacing, origin = oracle_ct
    reorder, direction = VARIANTS[variant]
    sp = np.asarray(spacing)[[0, 1, 2]]
    if variant.startswith("i and j"):
        sp = np.asarray(spacing)[[1, 0, 2]]
    volume = Volume.from_array(np.ascontiguousarray(reorder(hu)), tuple(sp), origin, direction)
    truth = reorder(liver)
    pred = predict_labels(volume, card(), intensity_network(threshold=0.9), batch_size=2)
    assert pred.labels.shape == volume.shape
    assert dice(pred.labels == 1, truth) > 0.9
    stats = organ_stats(pred.labels, 1, volume)
    truth_ml = truth.sum() * volume.geometry.voxel_volume_ml
    assert abs(stats["volume_ml"] - truth_ml) / truth_ml < 0.05
    assert stats["mean_hu"] > 250  # inside the mask it is the (marked) liver


def test_only_largest_component_and_no_holes(oracle_ct):
    hu, liver, spacing, origin = oracle_ct
    hu = hu.copy()
    hu[5:15, 5:15, 5:15] = 280.0  # a far-away blob
    cavity = np.argwhere(liver)[len(np.argwhere(liver)) // 2]
    c = tuple(slice(int(v) - 2, int(v) + 3) for v in cavity)
    hu[c] = 0.0  # a small hole inside the liver
    volume = Volume.from_array(hu, spacing, origin)
    pred = predict_labels(volume, card(), intensity_network(threshold=0.9), batch_size=2)
    assert not pred.labels[5:15, 5:15, 5:15].any()
    assert pred.labels[c].all()


def test_memory_stays_bounded_on_a_large_grid(oracle_ct):
    """Only a crop around the organ is interpolated on the input grid: no (C, full-res) float array is made."""
    import tracemalloc

    hu, _, spacing, origin = oracle_ct
    big = np.repeat(hu, 2, axis=2)  # 256 x 256 x 156
    volume = Volume.from_array(big, (spacing[0], spacing[1], spacing[2] / 2), origin)
    tracemalloc.start()
    predict_labels(volume, card(), intensity_network(threshold=0.9), batch_size=2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full_float_two_channels = 2 * big.size * 4
    assert peak < full_float_two_channels
