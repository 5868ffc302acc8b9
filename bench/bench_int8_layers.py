"""Where one INT8 window's time goes, and what two graph rewrites of the shipped export would save (issue #19).

OpenVINO's per-node profile of the shipped INT8 graph, summed by node type and by resolution, on a 96^3 window cut
from a real CT the model trained on (CHAOS; never the locked test case). Then two rewrites, each timed in the same
process against the graph as shipped:

- channels-last output (a Transpose appended to the graph, so OpenVINO need not reorder its blocked layout into
  NCDHW at the end): exact, but the sliding window would have to blend channels-last windows;
- DepthToSpace in place of each Reshape-Transpose-Reshape pixel shuffle of the sub-pixel decoder: the same
  permutation, but OpenVINO's low-precision passes then place the dequantisation differently, so the logits move
  and the export would have to be re-validated (`python -m medseg.train.quantize`).

    .venv/bin/python bench/bench_int8_layers.py --model medseg/models/zoo/abdomen-2.2
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path
from typing import Any

import numpy as np

from medseg.models.subpixel import PIXEL_SHUFFLE_ORDER

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_window(model: Any, roi: tuple[int, int, int], data: Path = SHARED) -> np.ndarray:
    """The centre window of CHAOS as the network sees it (model spacing, HU window), (1, 1, *roi) float32."""
    from medseg.infer.predict import model_input
    from medseg.io import read_image

    image = model_input(read_image(data / "ct/chaos_ct_sample/image.nii.gz"), model.card).image
    pad = [(0, max(r - s, 0)) for r, s in zip(roi, image.shape, strict=True)]
    image = np.pad(image, pad)
    start = [(s - r) // 2 for s, r in zip(image.shape, roi, strict=True)]
    crop = image[tuple(slice(a, a + r) for a, r in zip(start, roi, strict=True))]
    return np.ascontiguousarray(crop[None, None], dtype=np.float32)


def rewritten(xml: Path, depth_to_space: bool, channels_last: bool) -> Any:
    """The shipped graph with the chosen rewrites applied (in memory only)."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.Core().read_model(xml)
    if depth_to_space:
        for node in list(model.get_ordered_ops()):
            if node.get_type_name() != "Transpose":
                continue
            if list(node.input_value(1).get_node().get_vector()) != list(PIXEL_SHUFFLE_ORDER):
                continue
            source = node.input_value(0).get_node().input_value(0)
            (after,) = [t.get_node() for t in node.output(0).get_target_inputs()]
            after.output(0).replace(ops.depth_to_space(source, "blocks_first", 2).output(0))
    if channels_last:
        result = model.get_results()[0].input_value(0)
        moved = ops.transpose(result, ops.constant(np.array([0, 2, 3, 4, 1], dtype=np.int64)))
        model = ov.Model([moved.output(0)], model.get_parameters(), "channels_last")
    return model


def timed(model: Any, x: np.ndarray, repeats: int, profile: bool = False) -> tuple[float, np.ndarray, list[Any]]:
    """Median seconds per window, the (NCDHW) logits and, when asked, the per-node profile."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32"} | ({"PERF_COUNT": True} if profile else {})
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    for _ in range(3):
        request.infer({0: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = request.infer({0: x})[0]
        times.append(time.perf_counter() - t)
    logits = np.array(out)
    if logits.shape[1:4] == x.shape[2:]:
        logits = logits.transpose(0, 4, 1, 2, 3)
    return float(np.median(times)), logits, list(request.profiling_info) if profile else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="medseg/models/zoo/abdomen-2.2")
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args()
    import medseg.offline  # noqa: F401  (no telemetry from the OpenVINO import)
    from medseg.models.registry import resolve_model

    model = resolve_model(args.model)
    if model.card.int8 is None:
        raise SystemExit(f"{args.model}: no INT8 export in the card")
    xml = model.folder / model.card.int8.folder / "model.xml"
    x = real_window(model, tuple(model.card.roi_size))
    seconds, reference, profile = timed(rewritten(xml, False, False), x, args.repeats, profile=True)
    by_type: dict[tuple[str, str], float] = collections.defaultdict(float)
    full_res = 0.0
    for p in profile:
        ms = p.real_time.total_seconds() * 1e3
        by_type[(p.node_type, p.exec_type)] += ms
        full_res += ms if p.node_name.startswith(("__module.model.2.", "DepthToSpace")) else 0.0
    total = sum(by_type.values())
    print(f"{model.card.name} {model.card.version} INT8, one 96^3 window of CHAOS: {seconds * 1e3:.1f} ms wall, "
          f"{total:.1f} ms in nodes; output head at full resolution (model.2.*): {full_res:.1f} ms "
          f"({100 * full_res / total:.0f} %)")  # fmt: skip
    print("| node type | kernel | ms |\n|---|---|---|")
    for (kind, kernel), ms in sorted(by_type.items(), key=lambda kv: -kv[1])[:12]:
        print(f"| {kind} | {kernel} | {ms:.2f} |")
    print("\n| graph | ms per window (median) | max abs logit difference | argmax agreement |\n|---|---|---|---|")
    rows = {"as shipped": (False, False), "channels-last output": (False, True),
            "DepthToSpace pixel shuffles": (True, False), "both": (True, True)}  # fmt: skip
    for name, (d2s, last) in rows.items():
        s, logits, _ = timed(rewritten(xml, d2s, last), x, args.repeats)
        agree = float((logits.argmax(1) == reference.argmax(1)).mean())
        print(f"| {name} | {s * 1e3:.1f} | {np.abs(logits - reference).max():.3g} | {100 * agree:.3f} % |")


if __name__ == "__main__":
    main()
