"""Bring model-grid predictions back onto the exact input grid, one class probability at a time, inside a crop.

Never resamples multi-class logits at full resolution (the RAM blow-up of MONAI #6427): the box around the
predicted organ is mapped onto the input grid, and each class probability is interpolated only there, keeping a
running best label (argmax as it goes). Memory is one float32 crop plus the uint8 label map.
"""

from __future__ import annotations

import numpy as np

from medseg.io import Geometry


def input_box(model_box: tuple[slice, ...], model_to_input: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The input-grid box covering a model-grid box (4x4 `model_to_input` index map), grown by one voxel."""
    lo = [s.start - 0.5 for s in model_box]
    hi = [s.stop - 0.5 for s in model_box]
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    idx = corners @ model_to_input.T
    start = np.floor(idx[:, :3].min(0)).astype(int) - 1
    stop = np.ceil(idx[:, :3].max(0)).astype(int) + 2
    return tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(start, stop, shape, strict=True))


def sample_crop(
    model_array: np.ndarray, input_to_model: np.ndarray, box: tuple[slice, ...], order: int = 1
) -> np.ndarray:
    """Interpolate a model-grid array at the input voxels of `box` (4x4 `input_to_model` index map)."""
    from scipy.ndimage import affine_transform

    from medseg.preprocess.separable import resample_axis_aligned

    start = np.array([s.start for s in box], dtype=float)
    shape = tuple(s.stop - s.start for s in box)
    if order == 1:
        fast = resample_axis_aligned(model_array, input_to_model, shape, tuple(int(v) for v in start))
        if fast is not None:
            return fast
    return affine_transform(
        np.asarray(model_array, dtype=np.float32),
        input_to_model[:3, :3],
        offset=input_to_model[:3, :3] @ start + input_to_model[:3, 3],
        output_shape=shape,
        order=order,
        mode="nearest",
        prefilter=False,
    )


def labels_on_input_grid(
    probabilities: np.ndarray,
    model_affine_ras: np.ndarray,
    geometry: Geometry,
    model_box: tuple[slice, ...] | None,
) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """uint8 label map on `geometry` from (C, *model) class probabilities, filled only inside `model_box`."""
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    if model_box is None:
        return labels, None
    model_to_input = np.linalg.solve(geometry.affine_ras, model_affine_ras)
    box = input_box(model_box, model_to_input, geometry.shape)
    if any(s.stop <= s.start for s in box):
        return labels, None
    input_to_model = np.linalg.inv(model_to_input)
    if probabilities.shape[0] == 2:
        labels[box] = sample_crop(probabilities[1], input_to_model, box) > 0.5
        return labels, box
    best = sample_crop(probabilities[0], input_to_model, box)
    crop = np.zeros(best.shape, dtype=np.uint8)
    for c in range(1, probabilities.shape[0]):
        p = sample_crop(probabilities[c], input_to_model, box)
        better = p > best
        crop[better] = c
        np.maximum(best, p, out=best)
    labels[box] = crop
    return labels, box
