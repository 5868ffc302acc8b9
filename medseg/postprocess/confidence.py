"""Per-organ confidence of a segmentation, computed from the network's softmax at model spacing (before clean-up).

Three signals, none needing a reference:
- `boundary_entropy`: mean normalised softmax entropy (0 = certain, 1 = uniform) in a band of `BAND_VOX` voxels
  on both sides of the organ's boundary. A well-segmented organ has a sharp, confident edge.
- `uncertain_fraction`: the volume where the organ's probability lies between 0.2 and 0.8, as a fraction of the
  organ's volume: how much of the mask could flip either way (exceeds 1 when a tiny mask sits in a wide
  uncertain region). Size-normalised, so small and large organs compare.
- `neighbour_contact`: the share of the organ's surface voxels that touch another foreground class (multi-organ
  models only; 0 for a single-organ model): where the organ meets a neighbour, leaks are likely.
The QC flag `low_confidence` uses `uncertain_fraction` against the model card's limit (`confidence`) when the card
has one, else the one in `medseg/infer/qc_rules.yaml` (`medseg.infer.qc.confidence_limit`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BAND_VOX = 2
UNCERTAIN = (0.2, 0.8)


@dataclass(frozen=True)
class OrganConfidence:
    """Reference-free confidence signals of one organ (see the module docstring)."""

    boundary_entropy: float
    uncertain_fraction: float
    neighbour_contact: float

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Softmax entropy per voxel divided by log(C): 0 = one class certain, 1 = all classes equally likely."""
    p = np.clip(probs, 1e-8, 1.0)
    return (-(p * np.log(p)).sum(axis=0) / np.log(probs.shape[0])).astype(np.float32)


def organ_confidence(
    probs: np.ndarray, labels: dict[int, str], argmax: np.ndarray | None = None
) -> dict[str, OrganConfidence]:
    """Confidence of every foreground class in `labels` from (C, X, Y, Z) softmax probabilities. The uncertain
    fraction counts the whole volume; the band and surface measures work in the organ's box grown by the band
    (identical results, the cost of the morphology follows the organ, not the volume)."""
    from scipy import ndimage

    from medseg.postprocess.measure import bounding_box

    argmax = probs.argmax(axis=0) if argmax is None else argmax
    out = {}
    for c, name in labels.items():
        box = bounding_box(argmax == c, margin=BAND_VOX + 1)
        if box is None:
            out[name] = OrganConfidence(1.0, 1.0, 0.0)
            continue
        crop = argmax[box]
        mask = crop == c
        band = ndimage.binary_dilation(mask, iterations=BAND_VOX) & ~ndimage.binary_erosion(mask, iterations=BAND_VOX)
        uncertain = int(np.count_nonzero((probs[c] > UNCERTAIN[0]) & (probs[c] < UNCERTAIN[1])))
        surface = mask & ~ndimage.binary_erosion(mask)
        others = ndimage.binary_dilation((crop > 0) & ~mask)
        contact = float((surface & others).sum() / max(int(surface.sum()), 1))
        entropy = float(normalised_entropy(probs[(slice(None), *box)][:, band]).mean())
        out[name] = OrganConfidence(entropy, uncertain / int(mask.sum()), contact)
    return out
