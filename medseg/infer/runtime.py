"""Model runtimes: eager torch (the reference) and OpenVINO (fast on CPU) with a fixed-shape, parity-checked export.

The OpenVINO model is exported once per (weights SHA-256, window shape, batch, OpenVINO version), checked against
eager torch on a test input, and cached in `$MEDSEG_CACHE_DIR` (default `~/.cache/medseg`) with the digests of the
exported files; a cached export whose files changed, or whose parity check failed, is never used. A cache hit needs
neither torch nor MONAI, which keeps start-up short.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ProcessingError
from medseg.models.registry import InstalledModel, sha256_file

PARITY_MAX_ABS = 1e-2
PARITY_MIN_AGREEMENT = 0.999
BACKENDS = ("auto", "openvino", "torch")


@dataclass
class Runner:
    """A loaded model: call it with a (batch, 1, *roi) float32 array to get (batch, C, *roi) logits."""

    backend: str
    batch_size: int
    predict: Callable[[np.ndarray], np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.predict(batch)


def cache_dir() -> Path:
    """Where exported models are cached (outside the package, never in git)."""
    return Path(os.environ.get("MEDSEG_CACHE_DIR", Path.home() / ".cache" / "medseg"))


def torch_runner(model: InstalledModel, device: str = "cpu", batch_size: int = 4) -> Runner:
    """Eager torch: the reference implementation; `device` may be "cuda" where a GPU exists."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ProcessingError("--device cuda requested but no CUDA device is available", hint="Use --device cpu.")
    net = model.load_network(device)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    return Runner("torch", batch_size, predict, {"device": device})


def _parity_input(batch_size: int, roi: tuple[int, ...]) -> np.ndarray:
    """A deterministic, image-like test input (smooth blobs in [0, 1]) for export parity checks."""
    rng = np.random.default_rng(20261123)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, r, dtype=np.float32) for r in roi], indexing="ij"))
    out = np.zeros((batch_size, 1, *roi), dtype=np.float32)
    for b in range(batch_size):
        for _ in range(6):
            c = rng.uniform(-0.8, 0.8, size=(3, 1, 1, 1)).astype(np.float32)
            out[b, 0] += rng.uniform(0.3, 1.0) * np.exp(-((grid - c) ** 2).sum(0) / rng.uniform(0.05, 0.3))
    return np.clip(out + rng.normal(0, 0.02, out.shape).astype(np.float32), 0, 1)


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Largest absolute logit difference and voxel-wise argmax agreement between two outputs."""
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "argmax_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


def parity_ok(p: dict[str, float]) -> bool:
    return p["max_abs_diff"] <= PARITY_MAX_ABS and p["argmax_agreement"] >= PARITY_MIN_AGREEMENT


def _openvino_key(sha256: str, roi: tuple[int, ...], batch_size: int) -> str:
    import openvino

    text = json.dumps([sha256, list(roi), batch_size, openvino.get_version(), "f32"])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _export_openvino(model: InstalledModel, folder: Path, batch_size: int) -> dict[str, Any]:
    """Convert the eager network at a fixed shape, check parity against eager torch, and write it with its record."""
    import openvino as ov
    import torch

    from medseg.io.atomic import atomic_write_text

    roi = tuple(model.card.roi_size)
    net = model.load_network("cpu")
    example = _parity_input(batch_size, roi)
    with torch.inference_mode():
        reference = net(torch.from_numpy(example)).numpy()
        ov_model = ov.convert_model(net, example_input=torch.from_numpy(example))
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, folder / "model.xml", compress_to_fp16=False)
    compiled = ov.Core().compile_model(folder / "model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    record = {
        "weights_sha256": model.card.weights.sha256,
        "roi_size": list(roi),
        "batch_size": batch_size,
        "openvino": ov.get_version(),
        "parity": parity(reference, compiled(example)[0]),
        "files": {n: sha256_file(folder / n) for n in ("model.xml", "model.bin")},
    }
    record["parity_ok"] = parity_ok(record["parity"])
    atomic_write_text(folder / "record.json", json.dumps(record, indent=2), overwrite=True)
    return record


def openvino_runner(model: InstalledModel, batch_size: int = 1, cache: Path | None = None) -> Runner:
    """OpenVINO on CPU (f32) from the cache, exporting first if needed; raises ProcessingError if parity fails."""
    import openvino as ov

    sha = model.card.weights.sha256
    model.verify()
    folder = (cache or cache_dir()) / "openvino" / _openvino_key(sha, tuple(model.card.roi_size), batch_size)
    record_path = folder / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    exported = False
    if record is not None and any(
        not (folder / n).is_file() or sha256_file(folder / n) != d for n, d in record["files"].items()
    ):
        record = None
    if record is None:
        record = _export_openvino(model, folder, batch_size)
        exported = True
    if not record["parity_ok"] or record["weights_sha256"] != sha:
        raise ProcessingError(
            f"OpenVINO export does not match eager torch ({record['parity']})", hint="Use --backend torch."
        )
    compiled = ov.Core().compile_model(folder / "model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def predict(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: batch})[0].copy()

    info = {"exported_now": exported, "parity": record["parity"], "cache": str(folder)}
    return Runner("openvino", batch_size, predict, info)


def load_runner(
    model: InstalledModel, backend: str = "auto", device: str = "cpu", batch_size: int | None = None
) -> Runner:
    """The runtime for `backend`; "auto" = OpenVINO on CPU (falling back to torch if it fails), torch on CUDA."""
    if backend not in BACKENDS:
        raise ProcessingError(f"unknown backend {backend!r}", hint=f"Choose one of {', '.join(BACKENDS)}.")
    model.verify()
    if device != "cpu" or backend == "torch":
        return torch_runner(model, device, batch_size or 4)
    try:
        return openvino_runner(model, batch_size or 1)
    except Exception as exc:  # eager torch is the reference: an OpenVINO failure must not stop inference
        if backend == "openvino":
            if isinstance(exc, ProcessingError):
                raise
            raise ProcessingError(f"OpenVINO backend failed: {exc}", hint="Use --backend torch.") from exc
        reason = exc.message if isinstance(exc, ProcessingError) else f"{type(exc).__name__}: {exc}"
    runner = torch_runner(model, device, batch_size or 4)
    runner.info["fallback"] = f"OpenVINO not used ({reason}); ran eager torch"
    return runner
