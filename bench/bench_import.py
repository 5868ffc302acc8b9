"""MONAI's import, plain against `medseg.monai_import` (what `--backend torch`, `--device cuda` and `medseg train`
pay once per process), each in a fresh interpreter after `import torch`, alternated, median of `--repeat`.

    .venv/bin/python bench/bench_import.py [--repeat 5]

Also lists the libraries that the plain import loads and the lean one skips (they differ between machines: the lent
GPU image holds transformers, tensorboard and torchvision, this machine mlflow, matplotlib and scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import json, sys, time
import torch
t = time.perf_counter()
{lean}
from monai.networks.nets import UNet
elapsed = time.perf_counter() - t
from medseg.monai_import import SKIPPED
print(json.dumps({{"s": elapsed, "skippable_loaded": sorted(n for n in SKIPPED if n in sys.modules)}}))
"""
LEAN = "from medseg.monai_import import import_monai; import_monai()"


def once(lean: bool) -> dict:
    code = PROBE.format(lean=LEAN if lean else "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(repeat: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {"plain": [], "lean": []}
    for k in range(repeat):
        for name in ("plain", "lean") if k % 2 == 0 else ("lean", "plain"):
            runs[name].append(once(name == "lean"))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = measure(args.repeat)
    plain, lean = (statistics.median(r["s"] for r in runs[n]) for n in ("plain", "lean"))
    print(f"from monai.networks.nets import UNet, after torch, median of {args.repeat} fresh processes each:")
    print(f"  plain MONAI           {plain:6.2f} s   loads {', '.join(runs['plain'][0]['skippable_loaded']) or '-'}")
    print(f"  medseg.monai_import   {lean:6.2f} s   loads {', '.join(runs['lean'][0]['skippable_loaded']) or '-'}")
    print(f"  ratio plain/lean {plain / lean:.2f}x")


if __name__ == "__main__":
    main()
