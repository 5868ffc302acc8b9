"""Our MONAI-free preprocessing and sliding window against MONAI itself (the model contract), on real CT."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from medseg.infer.sliding import gaussian_importance, sliding_window, window_starts
from medseg.io import Volume, read_image
from medseg.preprocess import model_grid, resample_to_grid, window


def monai_preprocess(volume: Volume, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    from monai.transforms import Orientation, ScaleIntensityRange, Spacing

    mt = volume.to_metatensor().float()
    out = Orientation(axcodes="RAS", labels=None)(mt)
    out = Spacing(pixdim=spacing, mode="bilinear")(out)
    out = ScaleIntensityRange(-200, 300, 0.0, 1.0, clip=True)(out)
    return out[0].numpy(), out.affine.numpy()


def ours(volume: Volume, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    grid = model_grid(volume.geometry, spacing)
    return window(resample_to_grid(volume.array, volume.geometry, grid), -200, 300), grid.affine_ras


@pytest.mark.parametrize(
    ("rel", "spacing"),
    [
        ("ct/totalseg_example_ct_sm/image.nii.gz", (3.0, 3.0, 3.0)),
        ("ct/totalseg_example_ct_sm/image.nii.gz", (1.7, 2.3, 2.5)),
        ("ct/chaos_ct_sample/dicom", (3.0, 3.0, 3.0)),
        ("dicom/mr_series_penn_prisma_phantom", (2.5, 2.5, 2.5)),
    ],
)
def test_preprocessing_matches_monai(shared, rel, spacing):
    volume = read_image(shared / rel)
    expected, expected_affine = monai_preprocess(volume, spacing)
    got, affine = ours(volume, spacing)
    assert got.shape == expected.shape
    np.testing.assert_allclose(affine, expected_affine, atol=1e-4)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(perm=[0, 1, 2], flips=(False, False, False), spacing=(1.0, 1.0, 1.0), target=(1.0, 1.0, 1.5))
@example(perm=[2, 0, 1], flips=(True, False, True), spacing=(0.7, 2.5, 1.0), target=(3.0, 3.0, 3.0))
@given(
    perm=st.permutations([0, 1, 2]),
    flips=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    spacing=st.tuples(*[st.floats(0.5, 4.0)] * 3),
    target=st.tuples(*[st.floats(1.0, 4.0)] * 3),
)
def test_preprocessing_matches_monai_for_any_axis_order(shared, perm, flips, spacing, target):
    """Except where MONAI does not resample at all: when the target grid lies within `monai.data.utils.AFFINE_TOL`
    (1e-3) of the source in every affine entry with the same shape, `spatial_resample` returns the input unchanged
    (found by hypothesis: spacing 1.0 to 1.00025); medseg resamples to the spacing asked for."""
    ras_spacing = [spacing[list(perm).index(w)] for w in range(3)]
    assume(not all(abs(t - s) <= 1e-3 for t, s in zip(target, ras_spacing, strict=True)))
    base = read_image(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    d = np.eye(3)[:, list(perm)] * np.where(flips, -1.0, 1.0)[None, :]
    volume = Volume.from_array(base.array[::2, ::2, ::2], spacing, (10.0, -20.0, 30.0), d)
    expected, expected_affine = monai_preprocess(volume, target)
    got, affine = ours(volume, target)
    assert got.shape == expected.shape
    np.testing.assert_allclose(affine, expected_affine, atol=1e-4)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_gaussian_map_matches_monai():
    from monai.data.utils import compute_importance_map

    for roi in [(96, 96, 96), (64, 80, 33)]:
        expected = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125).numpy()
        np.testing.assert_allclose(gaussian_importance(roi), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("size", "roi", "overlap"), [(124, 96, 0.25), (167, 96, 0.25), (96, 96, 0.5), (300, 64, 0.0)])
def test_window_starts_match_monai(size, roi, overlap):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval((size,), (roi,), 1, (overlap,))
    expected = sorted({s[0].start for s in dense_patch_slices((size,), (roi,), interval)})
    assert window_starts(size, roi, overlap) == expected


@pytest.mark.parametrize("overlap", [0.25, 0.0])
def test_sliding_window_matches_monai(shared, overlap):
    """Same blended outputs as MONAI sliding_window_inference (gaussian), including a dimension smaller than roi."""
    import torch
    from monai.inferers import sliding_window_inference

    volume = read_image(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    image, _ = ours(volume, (2.0, 2.0, 2.5))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 2, 5, padding=2))
    roi = (64, 64, 48)
    with torch.inference_mode():
        expected = sliding_window_inference(
            torch.from_numpy(image)[None, None], roi, 2, net, overlap=overlap, mode="gaussian"
        )[0].numpy()

        def predict(batch: np.ndarray) -> np.ndarray:
            return net(torch.from_numpy(batch)).numpy()

        got = sliding_window(image, predict, roi, 2, batch_size=3, overlap=overlap, skip_constant=True)
    assert image.shape[2] < roi[2] < image.shape[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    perm=st.permutations([0, 1, 2]),
    flips=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    scale=st.tuples(*[st.floats(0.2, 5.0)] * 3),
    offset=st.tuples(*[st.floats(-3.0, 3.0)] * 3),
    out_shape=st.tuples(*[st.integers(1, 12)] * 3),
    fortran=st.booleans(),
)
def test_separable_resampling_equals_scipy(perm, flips, scale, offset, out_shape, fortran):
    """The fast axis-aligned path gives scipy's trilinear result (border mode) for any flips/permutations/scales."""
    from scipy.ndimage import affine_transform

    from medseg.preprocess.separable import resample_axis_aligned

    rng = np.random.default_rng(0)
    source = rng.normal(size=(7, 9, 5)).astype(np.float32)
    source = np.asfortranarray(source) if fortran else source
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for out_axis, src_axis in enumerate(perm):
        m[src_axis, out_axis] = -scale[out_axis] if flips[out_axis] else scale[out_axis]
        m[src_axis, 3] = offset[out_axis] + (source.shape[src_axis] - 1 if flips[out_axis] else 0)
    got = resample_axis_aligned(source, m, out_shape)
    expected = affine_transform(
        source, m[:3, :3], offset=m[:3, 3], output_shape=out_shape, order=1, mode="nearest", prefilter=False
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    perm=st.permutations([0, 1, 2]),
    scale=st.tuples(*[st.floats(0.2, 5.0)] * 3),
    out_shape=st.tuples(*[st.integers(1, 14)] * 3),
    slab=st.integers(1, 300),
)
def test_separable_resampling_on_two_threads_gives_the_serial_result_to_the_bit(perm, scale, out_shape, slab):
    """Each 1-D pass splits its output into slabs that run on both cores; with `MEDSEG_THREADS=1` the same slabs
    run on one thread. Every voxel sees the same operations: equal to the bit, whatever the slab size."""
    import medseg.preprocess.separable as separable

    rng = np.random.default_rng(3)
    source = rng.normal(size=(9, 7, 11)).astype(np.float32)
    m = np.eye(4)
    m[:3, :3] = 0.0
    for out_axis, src_axis in enumerate(perm):
        m[src_axis, out_axis] = scale[out_axis]

    def resampled(threads: str) -> np.ndarray:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEDSEG_THREADS", threads)
            mp.setattr(separable, "SLAB_ELEMENTS", slab)
            return separable.resample_axis_aligned(source, m, out_shape)

    assert np.array_equal(resampled("1"), resampled("2"))


@settings(max_examples=10, deadline=None)
@given(
    shape=st.tuples(*[st.integers(5, 40)] * 3),
    roi=st.tuples(*[st.integers(4, 24)] * 3),
    overlap=st.sampled_from([0.0, 0.25, 0.5, 0.6]),
    batch=st.integers(1, 3),
)
def test_sliding_window_matches_monai_for_any_shape(shape, roi, overlap, batch):
    import torch
    from monai.inferers import sliding_window_inference

    rng = np.random.default_rng(1)
    image = rng.random(shape, dtype=np.float32)
    image[: shape[0] // 2] = 0.3  # constant regions exercise the cached constant windows
    torch.manual_seed(1)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    with torch.inference_mode():
        expected = sliding_window_inference(torch.from_numpy(image)[None, None], roi, 1, net, overlap, "gaussian")

        def predict(b: np.ndarray) -> np.ndarray:
            return net(torch.from_numpy(b)).numpy()

        got = sliding_window(image, predict, roi, 3, batch_size=batch, overlap=overlap, skip_constant=True)
    np.testing.assert_allclose(got, expected[0].numpy(), atol=1e-5)


def test_pass_order_shrinks_the_big_axes_first_and_grows_last():
    """The cheapest order (fewest intermediate voxels): a 512x512x300 CT to 3 mm shrinks in-plane before the slice
    axis; bringing a 3 mm map back to that grid grows the slice axis first and the in-plane axes last."""
    from medseg.preprocess.separable import pass_order

    assert pass_order((300, 512, 512), (200, 125, 125)) == (1, 2, 0)
    assert pass_order((200, 125, 125), (300, 512, 512)) == (0, 1, 2)
    assert pass_order((4, 4, 4), (4, 4, 4)) == (0, 1, 2)


@pytest.mark.parametrize("writeable", [True, False])
def test_sliding_window_gives_the_same_when_the_network_reuses_its_output_buffer(writeable):
    """OpenVINO hands back its own output buffer, overwritten by the next call (`runtime._load_openvino`): the
    sliding window must use each output before the next call. Same result, to the bit, as a network returning fresh
    arrays, whether the buffer can be scaled in place or not."""
    rng = np.random.default_rng(3)
    image = rng.random((70, 50, 90), dtype=np.float32)
    kernel = rng.normal(size=(3, 1, 1, 1, 1)).astype(np.float32)

    def fresh(batch: np.ndarray) -> np.ndarray:
        return (batch * kernel[None, :, 0]).astype(np.float32)

    buffer = np.empty((2, 3, 32, 32, 32), dtype=np.float32)

    def shared(batch: np.ndarray) -> np.ndarray:
        buffer.flags.writeable = True
        buffer[...] = fresh(batch)
        buffer.flags.writeable = writeable
        return buffer

    expected = sliding_window(image, fresh, (32, 32, 32), 3, batch_size=2, overlap=0.25)
    got = sliding_window(image, shared, (32, 32, 32), 3, batch_size=2, overlap=0.25)
    assert np.array_equal(got, expected)


@settings(max_examples=15, deadline=None)
@given(
    shape=st.tuples(*[st.integers(5, 48)] * 3),
    roi=st.tuples(*[st.integers(4, 24)] * 3),
    channels=st.integers(1, 9),
    batch=st.integers(1, 3),
    overlap=st.sampled_from([0.0, 0.25, 0.5]),
)
def test_channels_blended_on_two_threads_give_the_serial_result_to_the_bit(shape, roi, channels, batch, overlap):
    """The sliding window blends each window's channels as separate tasks on both cores; `MEDSEG_THREADS=1` runs
    the same steps on one thread. Each voxel sees the same operations in the same order: equal to the bit."""
    rng = np.random.default_rng(7)
    image = rng.random(shape, dtype=np.float32)
    image[:, : shape[1] // 3] = 0.5  # constant windows take the cached path
    kernel = rng.normal(size=(channels,)).astype(np.float32)

    def network(b: np.ndarray) -> np.ndarray:
        return (np.sin(b * 7) * kernel[None, :, None, None, None]).astype(np.float32)

    def blended(threads: str) -> np.ndarray:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEDSEG_THREADS", threads)
            return sliding_window(image, network, roi, channels, batch, overlap, skip_constant=True)

    assert np.array_equal(blended("1"), blended("2"))
