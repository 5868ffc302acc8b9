"""`bench/bench_window_context.py`: at the card's own window it gives the Dice the model card states (so the other
sizes it reports are the same measurement with only the window changed), and another window moves the result."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_window_context import dice_by_window  # noqa: E402

from medseg.models.registry import resolve_model  # noqa: E402


def test_the_cards_window_reproduces_the_card_and_another_window_differs(shared: Path) -> None:
    model = resolve_model(None, "liver")
    roi = model.card.roi_size[0]
    assert tuple(model.card.roi_size) == (roi, roi, roi)
    got = dice_by_window(model, "totalseg_example_ct_sm", [roi, 64], shared)
    stated = model.card.metrics["validation_real_ct_model_label"]["cases"][0]
    assert stated["case"] == "totalseg_example_ct_sm"
    assert got[roi] == pytest.approx(stated["dice"], abs=0.002)
    assert 0.5 < got[64] < 1.0 and abs(got[64] - got[roi]) > 0.001
