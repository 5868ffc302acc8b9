"""Connected-component clean-up of binary masks: keep the largest component, fill enclosed holes.

Labelling uses cc3d (connected-components-3d) and hole filling fill_voids, both maintained by seung-lab (C++ with
Python bindings, on PyPI): on a liver box of a 512x512x300 CT they take 14 and 20-35 ms where the two
`scipy.ndimage.label` passes take 95 and 99 ms. Both are parity-tested against the scipy formulation they replace
(`scipy_largest_component`, `scipy_fill_holes`, kept as the reference): on a C-ordered array cc3d numbers
components in the same raster order as `ndimage.label`, so ties between equal sizes resolve identically.
"""

from __future__ import annotations

import numpy as np

SECOND_COMPONENT_MIN_FRACTION = 0.1


def _scipy_label26(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Components of `mask`, every neighbour connected (26 in 3D), by `scipy.ndimage.label`."""
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def _label26(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a 3D mask, numbered in C raster order of their first voxel (as `ndimage.label`).

    cc3d 4.1.1 fails on arrays with a dimension of 1 ("cannot be mapped to union-find array"): those go through
    scipy. cc3d numbers a Fortran-ordered array in another order, so it always gets a C-ordered one."""
    if mask.ndim != 3 or min(mask.shape) < 2:
        return _scipy_label26(mask)
    import cc3d

    labels, n = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=26, return_N=True)
    return labels, int(n)


def _keep_largest(labels: np.ndarray, n: int, mask: np.ndarray, keep: int) -> np.ndarray:
    """The `keep` largest of `n` numbered components (ties: the lower number), the second ones only if at least a
    tenth of the largest."""
    if n <= 1:
        return mask.astype(bool, copy=n == 0)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    if keep == 1:
        return labels == int(sizes.argmax())
    order = np.argsort(-sizes, kind="stable")[:keep]
    chosen = [int(i) for i in order if sizes[i] > 0 and sizes[i] >= SECOND_COMPONENT_MIN_FRACTION * sizes[order[0]]]
    return np.isin(labels, chosen)


def largest_component(mask: np.ndarray, keep: int = 1) -> np.ndarray:
    """The largest 26-connected component of `mask` (an empty mask stays empty); with `keep` = 2 (paired organs:
    both kidneys in one class) also the next largest ones, each if at least a tenth of the largest (a small
    stray island is still dropped)."""
    labels, n = _label26(mask)
    return _keep_largest(labels, n, mask, keep)


def scipy_largest_component(mask: np.ndarray, keep: int = 1) -> np.ndarray:
    """`largest_component` with `scipy.ndimage.label` (the reference the parity tests compare against)."""
    return _keep_largest(*_scipy_label26(mask), mask, keep)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities fully enclosed by `mask` in 3D (6-connected background not reaching the border).

    The mask is padded by one background voxel first: fill_voids 2.1.2 also fills background voxels on the array's
    edges that its flood fill does not reach from the faces (parity test), which would close an organ cut by the
    field of view. Not `in_place=True`: that path is five times slower (170 against 33 ms on a liver box)."""
    import fill_voids

    padded = np.pad(mask.astype(bool, copy=False), 1)
    return fill_voids.fill(padded, in_place=False)[(slice(1, -1),) * mask.ndim]


def scipy_fill_holes(mask: np.ndarray) -> np.ndarray:
    """`fill_holes` with `scipy.ndimage.label` (the reference the parity tests compare against). Until the fast path,
    medseg returned a mask with a single background region unchanged, even when that region was an enclosed cavity
    (a mask covering its whole border); it is filled now, as fill_voids does."""
    from scipy import ndimage

    background, n = ndimage.label(~mask)
    if n == 0:
        return mask.copy()
    edges = [np.unique(background[(slice(None),) * a + (i,)]) for a in range(mask.ndim) for i in (0, -1)]
    keep_background = np.zeros(n + 1, dtype=bool)
    keep_background[np.unique(np.concatenate(edges))] = True
    keep_background[0] = False
    return ~keep_background[background]
