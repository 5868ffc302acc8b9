"""Training prepares and evaluates volumes with the inference pieces, and gives what MONAI gave before."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.io import read_image
from medseg.preprocess import hu_window, window
from medseg.train import data as train_data
from medseg.train.evaluate import predict_volume
from medseg.train.realdata import to_model_grid


def test_training_uses_the_inference_hu_window():
    assert train_data.hu_window is hu_window is window
    hu = np.array([-1200.0, -200.0, 50.0, 300.0, 900.0])
    assert window(hu, -200.0, 300.0).tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_real_cases_reach_the_model_grid_as_monai_put_them(shared):
    from monai.transforms import Orientation, Spacing

    volume = read_image(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    labels = read_image(shared / "ct/totalseg_example_ct_sm/liver.nii.gz")
    spacing = (2.0, 2.0, 2.5)
    for vol, mode in ((volume, "bilinear"), (labels.with_array(labels.array.astype(np.float32)), "nearest")):
        ours, affine = to_model_grid(vol, spacing, mode)
        ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
        mt = Spacing(pixdim=spacing, mode=mode)(ras(vol.to_metatensor().float()))
        theirs = mt[0].numpy()
        assert ours.shape == theirs.shape and np.allclose(affine, np.asarray(mt.affine), atol=1e-4)
        if mode == "nearest":
            assert (ours != theirs).mean() < 1e-3
        else:
            assert np.abs(ours - theirs).max() < 1.0  # HU; interior voxels agree to float rounding


def test_evaluation_sliding_window_matches_monai(tmp_path):
    import torch
    from monai.inferers import sliding_window_inference

    from medseg.models.card import NetworkSpec
    from medseg.models.network import build_network

    torch.manual_seed(0)
    net = build_network(NetworkSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=1)).eval()
    image = np.random.default_rng(0).random((40, 36, 30), dtype=np.float32)
    ours = predict_volume(net, image, (32, 32, 32), 0.25, 2)
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(image)[None, None], (32, 32, 32), 2, net, 0.25, "gaussian")
    theirs = logits.argmax(1)[0].numpy()
    assert ours.shape == image.shape and (ours == theirs).mean() > 0.999
