"""Connected-component clean-up of binary masks: keep the largest component, fill enclosed holes."""

from __future__ import annotations

import numpy as np


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of `mask` (an empty mask stays empty)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool, copy=n == 0)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


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
