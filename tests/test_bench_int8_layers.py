"""`bench/bench_int8_layers.py` on the shipped INT8 export: its channels-last rewrite is exact (the claim the bench
reports), its DepthToSpace rewrite changes the graph's pixel shuffles and nothing else, and the window it times is
a real CT as the network sees it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_int8_layers import real_window, rewritten, timed  # noqa: E402

from medseg.models.registry import resolve_model  # noqa: E402
from medseg.models.subpixel import PIXEL_SHUFFLE_ORDER  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    model = resolve_model(None, "liver")
    assert model.card.int8 is not None
    return model, model.folder / model.card.int8.folder / "model.xml"


def _types(model) -> list[str]:
    return [n.get_type_name() for n in model.get_ordered_ops()]


def test_channels_last_output_gives_the_shipped_logits_exactly(shared: Path, shipped) -> None:
    model, xml = shipped
    x = real_window(model, tuple(model.card.roi_size), shared)
    assert x.shape == (1, 1, *model.card.roi_size) and 0.0 <= x.min() < x.max() <= 1.0
    _, reference, _ = timed(rewritten(xml, False, False), x, 1)
    _, moved, _ = timed(rewritten(xml, False, True), x, 1)
    assert reference.shape == moved.shape == (1, model.card.network.out_channels, *model.card.roi_size)
    assert np.array_equal(reference, moved)


def test_depth_to_space_replaces_every_pixel_shuffle_and_nothing_else(shipped) -> None:
    _, xml = shipped
    plain, swapped = rewritten(xml, False, False), rewritten(xml, True, False)
    order = list(PIXEL_SHUFFLE_ORDER)
    shuffles = [n for n in plain.get_ordered_ops()
                if n.get_type_name() == "Transpose" and list(n.input_value(1).get_node().get_vector()) == order]
    assert len(shuffles) == 4  # the four sub-pixel decoders of the UNet
    assert _types(swapped).count("DepthToSpace") == 4
    assert _types(swapped).count("Transpose") == _types(plain).count("Transpose") - 4
    assert _types(swapped).count("Convolution") == _types(plain).count("Convolution")
