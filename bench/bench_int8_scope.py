"""Which convolutions the INT8 export keeps in f32: each choice's speed and its agreement with f32 on the
training manifest's VALIDATION split (synthetic CT rendered from its label maps and its real CT), never on an
evaluation case. The choice made here is `medseg.train.quantize.KEEP_F32_FIRST/LAST`; the shipped export is then
accepted or refused on the evaluation cases by `python -m medseg.train.quantize`.

    .venv/bin/python bench/bench_int8_scope.py --model medseg/models/zoo/abdomen-2.2 \
        --manifest data_manifests/abdomen_v4.json --out /tmp/int8-scope
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

SCOPES = {"2/2": (2, 2), "2/1": (2, 1), "2/0": (2, 0), "0/0": (0, 0)}


def validation_volumes(model: Any, manifest: Any, root: Path, seed: int = 7) -> list[tuple[str, Any]]:
    """The manifest's validation split as model input: synthetic CT (at model spacing) and real CT volumes."""
    from medseg.io import read_image
    from medseg.train.synth.appearance import AppearanceParams
    from medseg.train.synth.generator import synth_volume
    from medseg.train.synth.prepare import cached_case

    rng = np.random.default_rng(seed)
    out: list[tuple[str, Any]] = []
    for e in manifest.split("val"):
        if e.kind == "label_map":
            case = cached_case(root / e.label, root / e.labels_json, model.card.spacing, e.sha256["label"],
                               labels_json_sha256=e.sha256.get("labels_json", ""))
            out.append((e.case_id, synth_volume(case, rng, AppearanceParams(p_random_intensity=0.0)).image))
        else:
            out.append((e.case_id, read_image(root / e.image)))
    return out


def label_map(model: Any, runner: Any, item: Any) -> np.ndarray:
    """Labels through the inference path: `predict_labels` for a real volume, the sliding window for synthetic HU
    already on the model grid."""
    from medseg.infer.predict import predict_labels
    from medseg.infer.sliding import sliding_window
    from medseg.preprocess.intensity import window

    card = model.card
    if isinstance(item, np.ndarray):
        image = window(item, card.intensity.a_min, card.intensity.a_max).astype(np.float32)
        return np.argmax(sliding_window(image, runner, tuple(card.roi_size), len(card.labels), 1, 0.25), 0)
    return predict_labels(item, card, runner, 1).labels


def agreement(pred: np.ndarray, ref: np.ndarray, labels: dict[int, str]) -> dict[str, tuple[float, float]]:
    """Per organ: Dice of INT8 against f32 and the relative volume change."""
    out = {}
    for value, organ in labels.items():
        a, b = pred == value, ref == value
        if value and b.any():
            out[organ] = (float(2 * (a & b).sum() / (a.sum() + b.sum())), float(a.sum() / b.sum() - 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="medseg/models/zoo/abdomen-2.2")
    ap.add_argument("--manifest", type=Path, default=Path("data_manifests/abdomen_v4.json"))
    ap.add_argument("--scopes", nargs="*", default=list(SCOPES), choices=list(SCOPES))
    ap.add_argument("--out", type=Path, default=Path("/tmp/int8-scope"))
    a = ap.parse_args()

    from medseg.digests import default_data_root
    from medseg.infer.runtime import Runner, _load_openvino, openvino_runner, parity
    from medseg.models.registry import resolve_model
    from medseg.train.manifest import load_manifest
    from medseg.train.quantize import calibration_windows, subpixel_graph, write_int8

    root = default_data_root()
    model = resolve_model(a.model)
    manifest, _ = load_manifest(a.manifest)
    windows, _ = calibration_windows(model, manifest, root)
    source = subpixel_graph(model)
    labels = {int(k): v for k, v in model.card.labels.items()}
    volumes = validation_volumes(model, manifest, root)
    f32 = openvino_runner(model)
    ref = {name: label_map(model, f32, item) for name, item in volumes}
    f32_ms = _window_ms(f32, windows)
    results: dict[str, Any] = {"f32_ms_per_window": f32_ms, "scopes": {}}
    for scope in a.scopes:
        first, last = SCOPES[scope]
        folder = a.out / scope.replace("/", "-")
        write_int8(source, windows, folder, first, last)
        runner = Runner("openvino-int8", 1, _load_openvino(folder))
        rows = {name: agreement(label_map(model, runner, item), ref[name], labels) for name, item in volumes}
        agreement_f32 = parity(source.reference, runner(source.example))
        results["scopes"][scope] = {"ms_per_window": _window_ms(runner, windows), "parity": agreement_f32,
                                    "validation": rows}  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "int8-scope.json").write_text(json.dumps(results, indent=1))
    print(f"f32: {f32_ms:.1f} ms per {model.card.roi_size} window")
    organs = [v for k, v in sorted(labels.items()) if k]
    print("| f32 convs first/last | ms per window | " + " | ".join(f"{o}: min Dice / max |vol|" for o in organs) + " |")
    for scope, r in results["scopes"].items():
        cells = []
        for organ in organs:
            vals = [v[organ] for v in r["validation"].values() if organ in v]
            cells.append(f"{min(d for d, _ in vals):.3f} / {100 * max(abs(c) for _, c in vals):.1f} %")
        print(f"| {scope} | {r['ms_per_window']:.1f} | " + " | ".join(cells) + " |")


def _window_ms(runner: Any, windows: list[np.ndarray], repeats: int = 12) -> float:
    """Median milliseconds per roi window (two warm-up calls not counted)."""
    times = []
    for i in range(repeats + 2):
        t = time.perf_counter()
        runner(windows[i % len(windows)])
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times[2:]))


if __name__ == "__main__":
    main()
