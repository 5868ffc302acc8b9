"""Detection delay and false-alarm rate of `medseg monitor` on streams built from real infer summaries.

Usage: .venv/bin/python bench/bench_monitor.py [--seeds 50] [--summaries DIR]
DIR holds `medseg infer` outputs of the four real CTs (made in a temporary folder when not given). Each stream: 60
reference cases, then 20 unshifted monitored cases, then up to 100 shifted ones; the report is evaluated after every
monitored case (as a scheduler running it per case would), and the delay is the number of shifted cases until the
first alarm of the expected kind. The false-alarm rate is the share of unshifted streams of the same length with any
alarm at any evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from monitor_streams import REAL_INPUTS, SHIFTS, read_summaries, run_real_inference, stream, to_facts

from medseg.digests import default_data_root
from medseg.monitor.report import analyse

REFERENCE, CLEAN, SHIFTED = 60, 20, 100
EXPECTED = {  # shift -> the feature whose alarm must fire
    "thick_slices": "slice_thickness_mm",
    "non_contrast": "contrast",
    "other_manufacturer": "manufacturer",
    "more_truncation": "organ_truncated",
    "under_segmentation": "volume_ml:liver",
}
RANGES = {"liver": (600.0, 3500.0)}


def first_alarm(cases: list, start: int, features: set[str] | None, step: int = 1) -> tuple[int | None, set[str]]:
    """Evaluate after every `step`-th monitored case from `start`; the first count with a matching alarm."""
    reference, monitored = cases[:REFERENCE], cases[REFERENCE:]
    seen: set[str] = set()
    for t in range(start, len(monitored) + 1, step):
        alarms = analyse(reference, monitored[:t], "bench", RANGES).alarms
        seen |= {a.feature for a in alarms}
        if alarms and (features is None or features & {a.feature for a in alarms}):
            return t, seen
    return None, seen


def load_base(folder: Path | None) -> dict:
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
        return read_summaries(run_real_inference(default_data_root(), folder))
    found = {p.parent.name: json.loads(p.read_text()) for p in folder.rglob("summary.json")}
    return {name: found[name] for name in REAL_INPUTS}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--summaries", type=Path)
    parser.add_argument("--fa-step", type=int, default=1, help="evaluate unshifted streams every N cases")
    parser.add_argument("--fa-only", action="store_true", help="measure the false-alarm rate only")
    args = parser.parse_args()
    base = load_base(args.summaries)
    t0 = time.perf_counter()
    n = REFERENCE + CLEAN + SHIFTED
    false_alarms, seen_false = 0, set()
    for seed in range(args.seeds):
        facts = to_facts(stream(base, 10_000 + seed, n))
        hit, seen = first_alarm(facts, 10, None, args.fa_step)
        false_alarms += hit is not None
        seen_false |= seen
    print(
        f"unshifted: {false_alarms}/{args.seeds} streams of {n} cases with any alarm, evaluated every "
        f"{args.fa_step} case(s) ({sorted(seen_false)})"
    )
    if args.fa_only:
        return
    for name, shift in SHIFTS.items():
        delays = []
        for seed in range(args.seeds):
            facts = to_facts(stream(base, seed, n, shift, REFERENCE + CLEAN))
            hit, _ = first_alarm(facts, CLEAN, {EXPECTED[name]})
            delays.append(np.inf if hit is None else hit - CLEAN)
        d = np.array(delays)
        ok = d[np.isfinite(d)]
        print(
            f"{name:20s} detected {ok.size}/{d.size}; delay median {np.median(d):.0f}, "
            f"90th pct {np.percentile(d, 90):.0f}, max {d.max():.0f} cases"
        )
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
