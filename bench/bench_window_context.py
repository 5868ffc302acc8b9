"""How much a real case's liver Dice depends on the sliding window's size alone (issue #12's measurement noise).

The network normalises each window by its own statistics (instance norm), so the same weights give a different
prediction when the window, and with it the context, changes. This bench runs the default model through the
inference path (`predict_labels`, torch, CPU) on every real CT with a liver label in ../shared/data, once per
cubic window size, and prints Dice against the label. It changes nothing in the product (the card's window is
what `medseg infer` uses); it measures how far apart two models must be on one case before the difference means
anything.

    .venv/bin/python bench/bench_window_context.py --sizes 64 80 96 112 128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = ("chaos_ct_sample", "radcttace_1211", "radcttace_0697", "totalseg_example_ct_sm")


def dice_by_window(model: Any, case: str, sizes: list[int], data: Path = SHARED) -> dict[int, float]:
    """Liver Dice of `model` on `case` (image.nii.gz against liver.nii.gz, on the image's grid) per cubic window
    size, scored as the model card's figures are (`medseg.train.evaluate.score`)."""
    from medseg.infer.predict import predict_labels
    from medseg.infer.runtime import torch_runner
    from medseg.io import read_image
    from medseg.train.accuracy import _on_grid
    from medseg.train.evaluate import score

    volume = read_image(data / "ct" / case / "image.nii.gz")
    truth = _on_grid(read_image(data / "ct" / case / "liver.nii.gz"), volume) > 0
    runner = torch_runner(model, batch_size=1)
    liver = next(v for v, name in model.card.foreground_labels.items() if name == "liver")
    out = {}
    for size in sizes:
        card = model.card.model_copy(update={"roi_size": [size, size, size]})
        pred = predict_labels(volume, card, runner, 1).labels == liver
        out[size] = score(pred, truth, volume.spacing, case, "").dice
    return out


def main() -> None:
    from medseg.models.registry import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model name or folder (default: the default liver model)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 80, 96, 112, 128])
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--out", type=Path, default=None, help="also write the table as JSON")
    args = ap.parse_args()
    model = resolve_model(args.model, "liver")
    print(f"{model.card.name} {model.card.version}: liver Dice by cubic window size (card: {model.card.roi_size})")
    print("| case | " + " | ".join(str(s) for s in args.sizes) + " | range |")
    print("|---|" + "---|" * (len(args.sizes) + 1))
    table = {}
    for case in args.cases:
        row = dice_by_window(model, case, args.sizes)
        table[case] = row
        values = list(row.values())
        print(f"| {case} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {max(values) - min(values):.4f} |",
              flush=True)  # fmt: skip
    means = [float(np.mean([table[c][s] for c in args.cases])) for s in args.sizes]
    print("| mean | " + " | ".join(f"{m:.4f}" for m in means) + f" | {max(means) - min(means):.4f} |")
    if args.out:
        args.out.write_text(json.dumps({"model": f"{model.card.name} {model.card.version}", "dice": table}, indent=1))


if __name__ == "__main__":
    main()
