"""The NIfTI writer's own encoding is byte for byte what nibabel writes, for every dtype medseg writes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medseg.errors import InvalidInputError
from medseg.io import Volume
from medseg.io.layout import reversed_axes
from medseg.io.nifti import WRITABLE_DTYPES, read_nifti, write_nifti

DTYPES = [np.dtype(t) for t in WRITABLE_DTYPES]


@given(data=st.data(), dtype=st.sampled_from(DTYPES), block=st.integers(1, 9))
@settings(max_examples=60, deadline=None)
def test_reversed_axes_equals_the_plain_transposed_copy(data, dtype, block) -> None:
    shape = data.draw(st.tuples(*[st.integers(1, 20)] * 3))
    array = data.draw(arrays(dtype, shape, elements=st.sampled_from([0, 0, 0, 1, 7]) if dtype.kind in "iu" else None))
    out = reversed_axes(array, block=block)
    assert out.flags.c_contiguous and out.tobytes() == np.ascontiguousarray(array.T).tobytes()


@given(data=st.data(), dtype=st.sampled_from(DTYPES), gz=st.booleans())
@settings(max_examples=40, deadline=None)
def test_written_file_is_what_nibabel_writes(tmp_path_factory, data, dtype, gz) -> None:
    shape = data.draw(st.tuples(*[st.integers(1, 17)] * 3))
    array = data.draw(arrays(dtype, shape))
    spacing = tuple(data.draw(st.floats(0.3, 5.0)) for _ in range(3))
    volume = Volume.from_array(array, spacing=spacing, origin=(10.0, -20.5, 3.25), direction=np.diag([-1.0, 1.0, 1.0]))
    path = tmp_path_factory.mktemp("n") / ("x.nii.gz" if gz else "x.nii")
    write_nifti(volume, path)
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    affine = volume.geometry.affine_ras
    image = nib.Nifti1Image(np.asanyarray(array), affine, dtype=array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm", "sec")
    assert raw == image.to_bytes()
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # written as given, refused on reading
        with pytest.raises(InvalidInputError, match=f"{int((~np.isfinite(array)).sum())} of {array.size} voxels"):
            read_nifti(path)
        return
    back = read_nifti(path)
    assert back.array.dtype == array.dtype and back.array.tobytes() == array.tobytes()
