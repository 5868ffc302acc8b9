"""Import MONAI without the optional libraries that it loads at import time and medseg never uses through it.

`import monai` imports every MONAI submodule, and each submodule's `optional_import` imports at once whatever
optional library is installed. Measured on the 2-core machine: `from monai.networks.nets import UNet` took 1.8 s
after torch (mlflow 0.52 s through `monai.handlers`, scipy.signal 0.43 s, matplotlib.pyplot 0.27 s); on the lent
GPU machine, whose image holds transformers, tensorboard, torchvision and the like, 13-17 s, most of the wall time
of a `medseg infer --device cuda`. medseg uses from MONAI only its networks, `MetaTensor` and `set_determinism`,
which need none of these. A library skipped here is, to MONAI, a library not installed, which it supports by design:
the features that need it raise MONAI's own `OptionalImportError` if called. Only imports made by the importing
thread during the import are refused, so other threads and later imports (medseg's own MLflow tracker, the
dashboard's matplotlib) are unaffected. It also keeps a broken optional library from taking medseg down with MONAI
(MONAI issue #8455: an onnx that crashed on import broke `import monai`; tested with a stand-in that exits).
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from types import ModuleType

SKIPPED = frozenset({
    "batchgenerators", "clearml", "cupy", "cupyx", "cv2", "einops", "fire", "gdown", "h5py", "huggingface_hub",
    "ignite", "itk", "jsonschema", "kvikio", "lmdb", "lpips", "matplotlib", "MetricsReloaded", "mlflow", "nni",
    "nrrd", "onnx", "onnxruntime", "onnxscript", "openslide", "optuna", "pandas", "polygraphy", "pynvml", "pywt",
    "scipy.signal", "segment_anything", "skimage", "sklearn", "tensorboard", "tensorboardX", "tensorrt", "tifffile",
    "torch_tensorrt", "torchaudio", "torchvision", "transformers", "zarr",
})  # fmt: skip
"""Optional MONAI dependencies (packages, or `scipy.signal`: 0.48 s, for MONAI's ultrasound confidence map) that
medseg does not use through MONAI; none of torch and numpy, MONAI's two required ones, and none of scipy's other
parts, nibabel, pydicom or SimpleITK, which medseg depends on."""


class _SkipOptional(importlib.abc.MetaPathFinder):
    """Refuses, for one thread, imports of the `SKIPPED` modules and their submodules."""

    def __init__(self, thread: int) -> None:
        self.thread = thread

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        parts = fullname.split(".")
        if threading.get_ident() == self.thread and any(".".join(parts[:k]) in SKIPPED for k in (1, 2)):
            raise ModuleNotFoundError(f"{fullname} skipped while importing MONAI (medseg does not use it)")
        return None


def import_monai() -> ModuleType:
    """The `monai` package, imported (once per process) with the `SKIPPED` libraries refused; call it before any
    `from monai... import`."""
    if (loaded := sys.modules.get("monai")) is not None:
        return loaded
    finder = _SkipOptional(threading.get_ident())
    sys.meta_path.insert(0, finder)
    try:
        import monai
    finally:
        sys.meta_path.remove(finder)
    return monai
