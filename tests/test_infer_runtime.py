"""Model runtimes: the OpenVINO fixed-shape export agrees with eager torch, is cached safely, and falls back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from infer_fixtures import make_model_folder

from medseg.errors import ProcessingError
from medseg.infer import runtime
from medseg.io import read_image
from medseg.models.registry import resolve_model, sha256_file
from medseg.preprocess import model_grid, resample_to_grid, window


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return resolve_model(make_model_folder(tmp_path_factory.mktemp("model"), seed=3, roi=(64, 64, 64)), "liver")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def real_window(shared, roi: tuple[int, int, int]) -> np.ndarray:
    volume = read_image(shared / "ct/chaos_ct_sample/image.nii.gz")
    grid = model_grid(volume.geometry, (3.0, 3.0, 3.0))
    image = window(resample_to_grid(volume.array, volume.geometry, grid), -200, 300)
    image = np.pad(image, [(0, max(r - s, 0)) for r, s in zip(roi, image.shape, strict=True)])
    return np.ascontiguousarray(image[: roi[0], : roi[1], : roi[2]])[None, None]


def test_openvino_matches_eager_torch_on_real_ct_and_is_cached(shared, model, cache):
    ov = runtime.load_runner(model, "openvino")
    assert ov.backend == "openvino" and ov.info["exported_now"]
    ref = runtime.load_runner(model, "torch", batch_size=1)
    x = real_window(shared, tuple(model.card.roi_size))
    p = runtime.parity(ref(x), ov(x))
    assert p["max_abs_diff"] < runtime.PARITY_MAX_ABS and p["argmax_agreement"] > runtime.PARITY_MIN_AGREEMENT
    again = runtime.load_runner(model, "openvino")
    assert not again.info["exported_now"]
    np.testing.assert_array_equal(again(x), ov(x))


def test_onnxruntime_export_matches_eager_torch(shared, model, cache):
    ort = runtime.load_runner(model, "onnxruntime")
    assert ort.backend == "onnxruntime" and ort.info["exported_now"]
    x = real_window(shared, tuple(model.card.roi_size))
    p = runtime.parity(runtime.load_runner(model, "torch", batch_size=1)(x), ort(x))
    assert p["max_abs_diff"] < runtime.PARITY_MAX_ABS and p["argmax_agreement"] > runtime.PARITY_MIN_AGREEMENT


def test_altered_cache_is_not_used(model, cache):
    first = runtime.load_runner(model, "openvino")
    folder = next((cache / "openvino").glob("*"))
    with (folder / "model.bin").open("r+b") as f:
        f.seek(4096)
        f.write(b"\x00\x01\x02\x03" * 16)
    second = runtime.load_runner(model, "openvino")
    assert second.info["exported_now"] and first.info["cache"] == second.info["cache"]
    fresh = json.loads((folder / "record.json").read_text())
    assert fresh["files"] == {n: sha256_file(folder / n) for n in ("model.xml", "model.bin")}
    assert runtime.parity_ok(fresh["parity"])


def test_failed_parity_falls_back_to_torch_or_refuses(model, cache, monkeypatch):
    monkeypatch.setattr(runtime, "PARITY_MAX_ABS", 0.0)
    with pytest.raises(ProcessingError, match="does not match eager torch"):
        runtime.load_runner(model, "openvino")
    auto = runtime.load_runner(model, "auto")
    assert auto.backend == "torch" and "fallback" in auto.info


def test_tampered_weights_are_refused_by_every_backend(tmp_path, cache):
    folder = make_model_folder(tmp_path / "m", seed=4, roi=(64, 64, 64))
    with (folder / "weights.pt").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"tampered")
    model = resolve_model(folder, "liver")
    for backend in ("auto", "openvino", "torch"):
        with pytest.raises(ProcessingError, match="SHA-256"):
            runtime.load_runner(model, backend)


def test_cuda_request_without_gpu_is_a_clear_error(model):
    import torch

    if torch.cuda.is_available():
        runner = runtime.load_runner(model, "auto", device="cuda")
        assert runner.backend == "torch" and runner.info["device"] == "cuda"
    else:
        with pytest.raises(ProcessingError, match="no CUDA device"):
            runtime.load_runner(model, "auto", device="cuda")


@pytest.mark.gpu
def test_cuda_runner_computes_the_cpu_float32_network(model):
    """On a GPU the torch runner gives the CPU's outputs within the export-parity limits (TF32 off); skipped without
    one (bench/bench_gpu.py checks the whole `medseg infer --device cuda` on a lent GPU machine)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    x = runtime._parity_input(2, tuple(model.card.roi_size))
    cpu = runtime.load_runner(model, "torch", device="cpu")(x)
    gpu = runtime.load_runner(model, "torch", device="cuda")(x)
    assert not torch.backends.cudnn.allow_tf32
    assert runtime.parity_ok(runtime.parity(cpu, gpu)), runtime.parity(cpu, gpu)


@pytest.mark.slow
def test_concurrent_first_use_publishes_one_consistent_export(model, cache):
    """Two processes exporting the same model at once: both end up with a verified, working export."""
    import subprocess
    import sys

    code = (
        "import sys; from medseg.models.registry import resolve_model; from medseg.infer.runtime import load_runner; "
        "r = load_runner(resolve_model(sys.argv[1], 'liver'), 'openvino'); print(r.backend)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(model.folder)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == ["openvino", "openvino"]
    folders = list((cache / "openvino").iterdir())
    assert len(folders) == 1 and not folders[0].name.startswith(".")
    assert not runtime.load_runner(model, "openvino").info["exported_now"]
