"""Connected-component clean-up of binary masks: keep the largest component, fill enclosed holes."""

from __future__ import annotations

import numpy as np

SECOND_COMPONENT_MIN_FRACTION = 0.1


def largest_component(mask: np.ndarray, keep: int = 1) -> np.ndarray:
    """The largest 26-connected component of `mask` (an empty mask stays empty); with `keep` = 2 (paired organs:
    both kidneys in one class) also the next largest ones, each if at least a tenth of the largest (a small
    stray island is still dropped)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool, copy=n == 0)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if keep == 1:
        return labels == int(sizes.argmax())
    order = np.argsort(-sizes, kind="stable")[:keep]
    chosen = [int(i) for i in order if sizes[i] > 0 and sizes[i] >= SECOND_COMPONENT_MIN_FRACTION * sizes[order[0]]]
    return np.isin(labels, chosen)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities fully enclosed by `mask` in 3D (6-connected background not reaching the border)."""
    from scipy import ndimage

    background, n = ndimage.label(~mask)
    if n <= 1:
        return mask.copy()
    border = np.unique(
        np.concatenate(
            [
                np.unique(background[idx])
                for idx in (
                    np.s_[0],
                    np.s_[-1],
                    np.s_[:, 0],
                    np.s_[:, -1],
                    np.s_[:, :, 0],
                    np.s_[:, :, -1],
                )
            ]
        )
    )
    keep_background = np.zeros(n + 1, dtype=bool)
    keep_background[border] = True
    keep_background[0] = False
    return ~keep_background[background]
