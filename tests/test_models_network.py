"""Both selectable architectures build from a card's NetworkSpec and map an image to per-class logits."""

from __future__ import annotations

import pytest

from medseg.models.card import NetworkSpec
from medseg.models.network import build_network


@pytest.mark.parametrize("name", ["UNet", "DynUNet"])
def test_network_maps_a_patch_to_logits_of_the_same_shape(name: str) -> None:
    import torch

    spec = NetworkSpec(name=name, channels=(8, 16, 32), strides=(2, 2))
    net = build_network(spec).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 32, 40, 24))
    assert out.shape == (1, 2, 32, 40, 24)
    assert torch.isfinite(out).all()


def test_unknown_architecture_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        NetworkSpec(name="nnUNet")
