"""From a CT volume to a cleaned label map on its exact grid: preprocess, sliding window, postprocess, resample back.

Memory stays bounded: the C-channel outputs exist only at model spacing; on the input grid only a crop around
the organ is interpolated, one class probability at a time (see `medseg.postprocess.resample_back`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medseg.infer.sliding import Network, WindowStats, sliding_window
from medseg.io import Volume
from medseg.models.card import ModelCard
from medseg.postprocess import input_grid_cleanup, labels_on_input_grid, model_space_cleanup, softmax
from medseg.postprocess.cleanup import components_per_class
from medseg.postprocess.confidence import OrganConfidence, organ_confidence
from medseg.preprocess import ModelGrid, hu_window, model_grid, resample_to_grid


@dataclass
class Prediction:
    """A label map on the input grid with how it was made (model grid, windows, seconds per stage)."""

    labels: np.ndarray
    grid: ModelGrid
    windows: WindowStats
    timings: dict[str, float] = field(default_factory=dict)
    confidence: dict[str, OrganConfidence] = field(default_factory=dict)
    box: tuple[slice, ...] | None = None  # a region of `labels` holding every non-zero voxel; None: the whole grid


@dataclass(frozen=True)
class ModelInput:
    """A volume resampled to the model grid and HU-windowed, with the seconds that took (batch runs make it ahead)."""

    grid: ModelGrid
    image: np.ndarray
    seconds: float


def model_input(volume: Volume, card: ModelCard) -> ModelInput:
    """The network's input for `volume` per the card (spacing, HU window)."""
    t = time.perf_counter()
    grid = model_grid(volume.geometry, card.spacing)
    resampled = resample_to_grid(volume.array, volume.geometry, grid)
    image = hu_window(resampled, card.intensity.a_min, card.intensity.a_max)
    return ModelInput(grid, image, time.perf_counter() - t)


def predict_labels(
    volume: Volume,
    card: ModelCard,
    network: Network,
    batch_size: int,
    overlap: float = 0.25,
    progress: Callable[[int, int], None] | None = None,
    prepared: ModelInput | None = None,
    classes: tuple[int, ...] | None = None,
) -> Prediction:
    """Segment `volume` with `network` per the model card's contract; labels come back on the input grid.

    `prepared` is `model_input(volume, card)` made ahead (by a batch run's background thread). With `classes`
    (the label values to be served) only those labels are exact on the input grid, others may be cut, and only
    those get a confidence."""
    timings: dict[str, float] = {}
    made = prepared if prepared is not None else model_input(volume, card)
    grid, image, timings["preprocess"] = made.grid, made.image, made.seconds
    del made, prepared

    t = time.perf_counter()
    stats = WindowStats()
    logits = sliding_window(
        image,
        network,
        tuple(card.roi_size),
        card.network.out_channels,
        batch_size=batch_size,
        overlap=overlap,
        skip_constant=True,
        stats=stats,
        progress=progress,
    )
    del image
    timings["inference"] = time.perf_counter() - t

    t = time.perf_counter()
    probs = softmax(logits)
    served = card.foreground_labels if classes is None else {c: card.foreground_labels[c] for c in classes}
    argmax = probs.argmax(axis=0)
    confidence = organ_confidence(probs, served, argmax)
    keep = components_per_class(card.labels)
    probs, model_box = model_space_cleanup(probs, argmax, keep)
    del argmax
    labels, box = labels_on_input_grid(probs, grid.affine_ras, volume.geometry, model_box, classes)
    del probs
    labels = input_grid_cleanup(labels, box, card.network.out_channels, classes, keep)
    timings["postprocess"] = time.perf_counter() - t
    return Prediction(labels, grid, stats, timings, confidence, box)
