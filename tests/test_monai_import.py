"""`medseg.monai_import`: MONAI imported without the optional libraries medseg does not use through it, in fresh
interpreters (a library once imported stays imported), with plain `import monai` as the control that shows the same
check sees them loaded otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from medseg.monai_import import SKIPPED, _SkipOptional

PROBE = """
import json, sys
import torch
{import_line}
from monai.networks.nets import UNet
from monai.data import MetaTensor
from monai.utils import set_determinism
loaded = sorted(n for n in {skipped!r} if n in sys.modules)
finders = [type(f).__name__ for f in sys.meta_path]
import mlflow, matplotlib.pyplot, scipy.signal  # importable afterwards
torch.manual_seed(0)
net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
x = torch.linspace(-1, 1, 16 ** 3).reshape(1, 1, 16, 16, 16)
print(json.dumps({{"loaded": loaded, "finders": finders, "out": net.eval()(x).sum().item()}}))
"""


def _probe(import_line: str) -> dict:
    code = PROBE.format(import_line=import_line, skipped=sorted(SKIPPED))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probes() -> dict[str, dict]:
    return {"lean": _probe("from medseg.monai_import import import_monai; import_monai()"), "plain": _probe("")}


def test_plain_import_loads_libraries_that_the_lean_import_skips(probes: dict[str, dict]) -> None:
    assert {"mlflow", "matplotlib", "scipy.signal"} <= set(probes["plain"]["loaded"])
    assert probes["lean"]["loaded"] == []


def test_lean_import_leaves_no_finder_and_the_same_network(probes: dict[str, dict]) -> None:
    assert "_SkipOptional" not in probes["lean"]["finders"]
    assert probes["lean"]["out"] == probes["plain"]["out"]


def test_finder_refuses_only_the_importing_thread_and_only_skipped_modules() -> None:
    finder = _SkipOptional(threading.get_ident())
    for name in ("mlflow", "mlflow.entities", "scipy.signal", "scipy.signal._peak_finding", "transformers"):
        with pytest.raises(ModuleNotFoundError, match="skipped while importing MONAI"):
            finder.find_spec(name)
    for name in ("scipy", "scipy.sparse", "numpy", "torch", "nibabel", "monai.networks"):
        assert finder.find_spec(name) is None
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(finder.find_spec("mlflow")))
    thread.start()
    thread.join()
    assert other == [None]


def test_skipped_names_exclude_what_monai_and_medseg_need() -> None:
    assert not SKIPPED & {"torch", "numpy", "scipy", "nibabel", "pydicom", "SimpleITK", "yaml", "psutil"}


def test_bench_import_reports_both_imports_and_their_ratio(monkeypatch, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_import

    monkeypatch.setattr(sys, "argv", ["bench_import.py", "--repeat", "1"])
    bench_import.main()
    out = capsys.readouterr().out
    assert "plain MONAI" in out and "medseg.monai_import" in out and "ratio plain/lean" in out
    lean_line = next(line for line in out.splitlines() if "medseg.monai_import" in line)
    assert lean_line.rstrip().endswith("loads -")


@pytest.mark.parametrize("lean", [False, True])
def test_a_crashing_optional_library_cannot_take_the_import_down(tmp_path: Path, lean: bool) -> None:
    """MONAI issue #8455: an optional library that crashed on import (onnx 1.18 on Windows) took `import monai` down
    with it. A stand-in `tensorboard` that ends the process on import: the plain import dies, the lean one does not."""
    fake = tmp_path / "tensorboard"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos._exit(42)\n")
    lean_line = "from medseg.monai_import import import_monai; import_monai(); " if lean else ""
    code = f"import torch; {lean_line}from monai.networks.nets import UNet; print('imported')"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert (proc.returncode, "imported" in proc.stdout) == ((0, True) if lean else (42, False)), proc.stderr[-500:]
