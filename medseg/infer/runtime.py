"""Model runtimes: eager torch (the reference), and OpenVINO (default on CPU) or ONNX Runtime from fixed-shape exports.

An accelerated model is exported once per (weights SHA-256, window shape, batch, backend version), checked against
eager torch on a test input, and cached in `$MEDSEG_CACHE_DIR` (default `~/.cache/medseg`) with the digests of the
exported files; a cached export whose files changed, or whose parity check failed, is never used. A cache hit needs
neither torch nor MONAI, which keeps start-up short.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.cache import cache_dir, cache_subdir, unsafe_cache_entry
from medseg.errors import ProcessingError, UsageError
from medseg.io.atomic import os_reason, staging_folder
from medseg.models.registry import InstalledModel, sha256_file

PARITY_MAX_ABS = 1e-2
PARITY_MIN_AGREEMENT = 0.999
BACKENDS = ("auto", "openvino", "onnxruntime", "torch")
PRECISIONS = ("f32", "int8")


@dataclass
class Runner:
    """A loaded model, the one name for it: call it with a (batch, 1, *roi) float32 array to get (batch, C, *roi)
    logits (it is an `infer.sliding.Network`); `forward` is the backend's function, `info` what was loaded how.
    The logits may live in the backend's own buffer (OpenVINO): use them before the next call, or copy them."""

    backend: str
    batch_size: int
    forward: Callable[[np.ndarray], np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)


def check_device(device: str) -> None:
    """Refuse `--device cuda` on a machine without a usable GPU before any input is read (exit 4, as at load)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ProcessingError("--device cuda requested but no CUDA device is available", hint="Use --device cpu.")


def torch_runner(model: InstalledModel, device: str = "cpu", batch_size: int = 4) -> Runner:
    """Eager torch: the reference implementation; `device` may be "cuda" where a GPU exists."""
    if device.startswith("cuda"):
        check_device(device)
        exact_float32_on_cuda()
    return module_runner(model.load_network(device), device, batch_size)


def exact_float32_on_cuda() -> None:
    """Turn off TF32 (10-bit mantissa) in cuDNN convolutions and matmuls, on by default for convolutions, so that
    `--device cuda` computes the float32 network that was validated and its labels match the CPU's."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def module_runner(net: Any, device: str = "cpu", batch_size: int = 4) -> Runner:
    """A Runner around a torch module already in memory (the shipped model, or a network being trained)."""
    import torch

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    return Runner("torch", batch_size, forward, {"device": device})


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


def _cache_key(backend: str, sha256: str, roi: tuple[int, ...], batch_size: int, version: str) -> str:
    text = json.dumps([backend, sha256, list(roi), batch_size, version, "f32", "static-shape"])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _export_openvino(net: Any, example: np.ndarray, folder: Path) -> list[str]:
    """Convert the eager network with the example's shape fixed in the graph (about 8 % faster than a dynamic
    shape here); return the files written."""
    import openvino as ov
    import torch

    with torch.inference_mode():
        ov_model = ov.convert_model(net, example_input=torch.from_numpy(example), input=[list(example.shape)])
    ov.save_model(ov_model, folder / "model.xml", compress_to_fp16=False)
    return ["model.xml", "model.bin"]


def _load_openvino(folder: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The compiled model as a function. Its output is OpenVINO's own output buffer, not a copy (a 96^3 window of
    eight classes is 28 MB, copied twice before: about 6 ms a window): valid until the next call, which the sliding
    window respects (it blends each output before it runs the next window); a caller that keeps outputs copies them."""
    import openvino as ov

    compiled = ov.Core().compile_model(folder / "model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda batch: request.infer({0: batch}, share_inputs=True, share_outputs=True)[0]


def _export_onnx(net: Any, example: np.ndarray, folder: Path) -> list[str]:
    """TorchScript-based ONNX export with fixed shapes (dynamic spatial axes gave wrong outputs here)."""
    import torch

    with torch.inference_mode():
        torch.onnx.export(
            net,
            (torch.from_numpy(example),),
            str(folder / "model.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
        )
    return ["model.onnx"]


def _load_onnx(folder: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"image": batch})[0]


def _backend_version(backend: str) -> str:
    if backend == "openvino":
        import openvino

        return openvino.get_version()
    import onnxruntime

    return onnxruntime.__version__


EXPORTERS = {"openvino": (_export_openvino, _load_openvino), "onnxruntime": (_export_onnx, _load_onnx)}


def _files_intact(folder: Path, record: dict[str, Any]) -> bool:
    return all((folder / n).is_file() and sha256_file(folder / n) == d for n, d in record["files"].items())


def _export(model: InstalledModel, backend: str, folder: Path, batch_size: int, version: str) -> dict[str, Any]:
    """Export at a fixed shape, compare with eager torch on a test input, and write the files with their record."""
    import torch

    from medseg.io.atomic import atomic_write_text

    roi = tuple(model.card.roi_size)
    net = model.load_network("cpu")
    example = _parity_input(batch_size, roi)
    with torch.inference_mode():
        reference = net(torch.from_numpy(example)).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    files = EXPORTERS[backend][0](net, example, folder)
    record = {
        "backend": backend,
        "version": version,
        "weights_sha256": model.card.weights.sha256,
        "roi_size": list(roi),
        "batch_size": batch_size,
        "parity": parity(reference, EXPORTERS[backend][1](folder)(example)),
        "files": {n: sha256_file(folder / n) for n in files},
    }
    atomic_write_text(folder / "record.json", json.dumps(record, indent=2), overwrite=True)
    return record


def _publish(staging: Path, folder: Path) -> None:
    """Move a finished export into place; a concurrent process that published first wins (ours is dropped)."""
    if folder.exists():
        stale = folder.with_name(f".stale-{folder.name}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            folder.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)


def accelerated_runner(
    model: InstalledModel, backend: str = "openvino", batch_size: int = 1, cache: Path | None = None
) -> Runner:
    """OpenVINO or ONNX Runtime on CPU (f32) from the cache, exporting first if needed (raises if parity fails).

    The cache is trusted like the installed package (whoever can write it can change what runs): its folders are
    created owner-only and a group- or other-writable one is refused; the exported files' SHA-256 go into `info`
    (summary.json's runtime) so that every result names the exact export that computed it."""
    sha = model.verify()
    version = _backend_version(backend)
    key = _cache_key(backend, sha, tuple(model.card.roi_size), batch_size, version)
    root = cache or cache_dir()
    private_folder(root / backend, root)
    folder = root / backend / key
    if folder.is_dir():
        private_folder(folder, root, files=True)
    record_path = folder / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    exported = record is None or not _files_intact(folder, record) or record.get("weights_sha256") != sha
    if exported:
        _export_into(model, backend, folder, batch_size, version)
        record = json.loads(record_path.read_text())
        if not _files_intact(folder, record):
            raise ProcessingError(f"{backend} export in {folder} changed while loading", hint="Run again.")
    if not parity_ok(record["parity"]):
        raise ProcessingError(
            f"{backend} export does not match eager torch ({record['parity']})", hint="Use --backend torch."
        )
    forward = EXPORTERS[backend][1](folder)
    info = {"exported_now": exported, "parity": record["parity"], "cache": str(folder), "version": version,
            "files_sha256": dict(record["files"])}  # fmt: skip
    return Runner(backend, batch_size, forward, info)


def private_folder(folder: Path, root: Path, files: bool = False) -> None:
    """Create `folder` (and `root` above it) owner-only (0700) where missing, and refuse (exit 4) a folder from
    `root` down, or with `files` a file in `folder`, that another user owns or others may write: a user who can
    write the export cache can change what the model computes."""
    try:
        cache_subdir(*folder.relative_to(root).parts, root=root)
        unsafe = unsafe_cache_entry(folder, root, files)
    except OSError as exc:
        raise ProcessingError(f"cannot use the model export cache: {os_reason(exc)}", path=folder,
                              hint="Check MEDSEG_CACHE_DIR and its permissions.") from exc  # fmt: skip
    if unsafe is not None:
        entry, why = unsafe
        what = "folder" if entry.is_dir() else "file"
        fix = "Point" if "owned" in why else f"chmod -R go-w {entry}, or point"
        raise ProcessingError(f"the model export cache {what} {why}; not used", path=entry,
                              hint=f"{fix} MEDSEG_CACHE_DIR at a folder only you own and can write.")


def _export_into(model: InstalledModel, backend: str, folder: Path, batch_size: int, version: str) -> None:
    """Export into an owner-only staging folder beside `folder`, then publish it; on any failure the staging folder
    is removed (a full disk must not leave half an export behind) and a write failure names the cache folder."""
    staging = staging_folder(folder)
    try:
        staging.chmod(0o700)
        _export(model, backend, staging, batch_size, version)
        for written in staging.iterdir():
            written.chmod(written.stat().st_mode & 0o755)  # under umask 002 the exporters leave them group-writable
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, ProcessingError) and _is_write_failure(exc):
            raise ProcessingError(f"cannot write the {backend} export into the cache: {os_reason(exc)}",
                                  path=folder.parent, hint="Free space there or point MEDSEG_CACHE_DIR elsewhere; "
                                  "or use --backend torch.") from exc  # fmt: skip
        raise
    _publish(staging, folder)


def _is_write_failure(exc: BaseException) -> bool:
    """An exporter's file write that failed (OpenVINO's C++ stream error on a full disk, an OSError underneath)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) or "basic_ios" in str(seen) or "iostream" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def int8_runner(model: InstalledModel) -> Runner:
    """The model's shipped INT8 OpenVINO export (batch 1), after checking every file against the card's digests."""
    spec = model.card.int8
    if spec is None:
        raise UsageError(
            f"model {model.card.name!r} {model.card.version} has no validated INT8 export", hint="Use --precision f32."
        )
    model.verify()
    model.verify_int8()
    folder = model.folder / spec.folder
    info = {"precision": "int8", "parity": spec.parity, "version": _backend_version("openvino")}
    return Runner("openvino-int8", 1, _load_openvino(folder), info)


def openvino_runner(model: InstalledModel, batch_size: int = 1, cache: Path | None = None) -> Runner:
    """OpenVINO on CPU (f32), the default accelerated backend."""
    return accelerated_runner(model, "openvino", batch_size, cache)


def check_precision(model: InstalledModel, backend: str, device: str, precision: str) -> None:
    """Refuse (UsageError) a precision the model or runtime cannot serve, before any case is read."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint=f"Choose one of {', '.join(PRECISIONS)}.")
    if precision == "int8":
        if device != "cpu" or backend not in ("auto", "openvino"):
            hint = "Use --device cpu." if device != "cpu" else "Use --backend openvino or auto."
            raise UsageError("--precision int8 runs on OpenVINO on the CPU only", hint=hint)
        if model.card.int8 is None:
            raise UsageError(
                f"model {model.card.name!r} {model.card.version} has no validated INT8 export",
                hint="Use --precision f32.",
            )


def load_runner(
    model: InstalledModel,
    backend: str = "auto",
    device: str = "cpu",
    batch_size: int | None = None,
    precision: str = "f32",
    cache: Path | None = None,
) -> Runner:
    """The runtime for `backend`; "auto" = OpenVINO on CPU (falling back to torch if it fails), torch on CUDA.

    `precision="int8"` runs the model's shipped, validated INT8 OpenVINO export (CPU only; never a fallback).
    `cache`: where accelerated exports are kept (default `cache_dir()`).
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}", hint=f"Choose one of {', '.join(BACKENDS)}.")
    check_precision(model, backend, device, precision)
    if precision == "int8":
        return int8_runner(model)
    model.verify()
    if device != "cpu" or backend == "torch":
        return torch_runner(model, device, batch_size or 4)
    try:
        return accelerated_runner(model, "openvino" if backend == "auto" else backend, batch_size or 1, cache)
    except Exception as exc:  # eager torch is the reference: an accelerated backend failing must not stop inference
        if backend != "auto":
            if isinstance(exc, ProcessingError):
                raise
            raise ProcessingError(f"{backend} backend failed: {exc}", hint="Use --backend torch.") from exc
        reason = exc.one_line() if isinstance(exc, ProcessingError) else f"{type(exc).__name__}: {exc}"
    runner = torch_runner(model, device, batch_size or 4)
    runner.info["fallback"] = f"OpenVINO not used ({reason}); ran eager torch"
    return runner


class LazyRunner:
    """A Runner loaded on first use, so refused or unreadable inputs never wait for the model to load or export."""

    def __init__(self, load: Callable[[], Runner], backend: str) -> None:
        self._load = load
        self._runner: Runner | None = None
        self.requested_backend = backend

    @property
    def loaded(self) -> bool:
        return self._runner is not None

    @property
    def runner(self) -> Runner:
        """The loaded Runner (loads it on the first call)."""
        if self._runner is None:
            self._runner = self._load()
        return self._runner

    @property
    def backend(self) -> str:
        return self._runner.backend if self._runner is not None else self.requested_backend

    @property
    def batch_size(self) -> int:
        return self.runner.batch_size

    @property
    def info(self) -> dict[str, Any]:
        return self.runner.info

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.runner(batch)
