"""Memory layout: an array with its axes reversed, as C-contiguous data (the bytes of `array` in Fortran order).

NIfTI voxel data and DICOM frames both run the first index fastest, while medseg keeps volumes as C-ordered
[i, j, k]. numpy's plain transposed copy reads with a stride of a whole plane; copying in cubes keeps both reads and
writes local, and for integer arrays cubes that hold only zeros (most of a label map) are skipped (not for floats:
-0.0 would come out as 0.0). Same bytes as `np.ascontiguousarray(array.T)` (tested), about 3x faster on a
512x512x300 label map.
"""

from __future__ import annotations

import numpy as np


def reversed_axes(array: np.ndarray, dtype: np.dtype | type | None = None, block: int = 64) -> np.ndarray:
    """`array.transpose()` as a new C-contiguous array (cast to `dtype` like `astype` when given)."""
    out = np.zeros(array.shape[::-1], dtype=array.dtype if dtype is None else dtype)
    ni, nj, nk = array.shape
    skip = array.dtype.kind in "biu"
    for i in range(0, ni, block):
        for j in range(0, nj, block):
            for k in range(0, nk, block):
                cube = array[i : i + block, j : j + block, k : k + block]
                if not skip or cube.any():
                    out[k : k + block, j : j + block, i : i + block] = cube.transpose(2, 1, 0)
    return out
