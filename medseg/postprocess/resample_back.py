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


def class_input_box(
    nonzero: np.ndarray, model_to_input: np.ndarray, shape: tuple[int, ...]
) -> tuple[slice, ...] | None:
    """The input-grid box outside which linear interpolation of a model-grid array is exactly 0 (None: all 0).

    Grown by one model voxel so that every input voxel interpolating from a non-zero model voxel is inside; a
    side touching the model grid's edge is left open, since `sample_crop` extends edge values."""
    from medseg.postprocess.measure import bounding_box

    found = bounding_box(nonzero)
    if found is None:
        return None
    grown = tuple(
        slice(s.start - 1 if s.start > 0 else -(10**9), s.stop + 1 if s.stop < n else 10**9)
        for s, n in zip(found, nonzero.shape, strict=True)
    )
    box = input_box(grown, model_to_input, shape)
    return None if any(s.stop <= s.start for s in box) else box


def _intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    """`a` within `b`, as slices relative to `b`'s start; None when they do not overlap."""
    out = tuple(
        slice(max(x.start, y.start) - y.start, min(x.stop, y.stop) - y.start) for x, y in zip(a, b, strict=True)
    )
    return None if any(s.stop <= s.start for s in out) else out


def _union(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    """The smallest box holding every box."""
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(len(boxes[0])))


def labels_on_input_grid(
    probabilities: np.ndarray,
    model_affine_ras: np.ndarray,
    geometry: Geometry,
    model_box: tuple[slice, ...] | None,
    classes: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """uint8 label map on `geometry` from (C, *model) class probabilities, filled only inside `model_box`.

    Each class is interpolated only inside the input box of its non-zero probabilities (outside it the
    interpolated value is exactly 0 and cannot beat the running best), which gives the same argmax as
    interpolating every class on the whole box. With `classes`, only the region where those classes can win is
    computed: their labels are exact, other classes' labels may be cut at that region's border."""
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
    own = {
        c: class_input_box(probabilities[c] > 0, model_to_input, geometry.shape) for c in range(1, len(probabilities))
    }
    wanted = [own[c] for c in (classes if classes is not None else own) if own.get(c) is not None]
    inside = [b for b in (_intersect(w, box) for w in wanted) if b is not None]
    if not inside:
        return labels, None
    region = tuple(slice(box[i].start + r.start, box[i].start + r.stop) for i, r in enumerate(_union(inside)))
    best = sample_crop(probabilities[0], input_to_model, region)
    crop = np.zeros(best.shape, dtype=np.uint8)
    for c, cbox in own.items():
        sub = None if cbox is None else _intersect(cbox, region)
        if sub is None:
            continue
        p = sample_crop(probabilities[c], input_to_model, tuple(slice(r.start + s.start, r.start + s.stop)
                                                                for r, s in zip(region, sub, strict=True)))
        view = best[sub]
        crop[sub][p > view] = c
        np.maximum(view, p, out=view)
    labels[region] = crop
    return labels, region
