"""Real CT/label pairs at the model grid, prepared exactly like inference input (RAS, model spacing), cached.

Model contract: the inference preprocessing (`preprocess.model_grid` + `resample_to_grid`, parity-tested against
MONAI `Orientation("RAS")` + `Spacing`), linear for images and nearest for labels. Images stay in HU here;
windowing happens when patches are drawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.cache import cache_subdir
from medseg.errors import InvalidInputError
from medseg.io import Volume, read_image
from medseg.preprocess import model_grid, resample_to_grid
from medseg.train.cachefile import check_sources_unchanged, load_npz, save_npz

# An organ label never covers air: real liver labels hold 0.00% voxels under -500 HU at the model grid, labels
# mirrored along any axis of the TotalSegmentator example 4.4-5.1%.
AIR_HU = -500.0
MAX_AIR_IN_LABEL = 0.01


@dataclass
class RealCase:
    """A real CT in HU and its binary liver label, both on the model grid (RAS, model spacing)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def to_model_grid(volume: Volume, spacing: tuple[float, float, float], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Array and RAS affine of `volume` on the model grid, exactly as inference prepares it ("bilinear" for
    images, "nearest" for labels)."""
    grid = model_grid(volume.geometry, spacing)
    array = np.asarray(volume.array, dtype=np.float32)
    out = resample_to_grid(array, volume.geometry, grid, order=1 if mode == "bilinear" else 0)
    return np.asarray(out, dtype=np.float32), np.asarray(grid.affine_ras, dtype=np.float64)


def check_hu(volume: Volume, path: Path) -> None:
    """Refuse an image that is not a CT in HU (inference's `not_hu` rule): a 0/1 mask or an 8-bit display image
    (values all in [0, 255]) or windowed data (nothing near air)."""
    from medseg.infer.qc import rules

    r = rules()
    a = np.asarray(volume.array)
    lo, hi = float(a.min()), float(a.max())
    if (lo >= 0 and hi <= r["max_display_value"]) or lo > r["min_air_hu"]:
        raise InvalidInputError(f"image values lie in [{lo:g}, {hi:g}]: not a CT in HU (image and label swapped?)",
                                path=path)  # fmt: skip


def prepare_real_case(name: str, image: Path, label: Path, liver_value: int,
                      spacing: tuple[float, float, float]) -> RealCase:  # fmt: skip
    """Read a CT and its label map, check they share a grid, and bring both to the model grid."""
    img = read_image(image)
    check_hu(img, image)
    lab = read_image(label)
    binary = lab.with_array((np.asarray(lab.array) == liver_value).astype(np.float32))
    hu, affine = to_model_grid(img, spacing, "bilinear")
    lv, lab_affine = to_model_grid(binary, spacing, "nearest")
    if hu.shape != lv.shape or not np.allclose(affine, lab_affine, atol=0.5):
        raise InvalidInputError("label and image do not cover the same voxel grid (after reorientation)", path=label)
    mask = lv > 0.5
    if not mask.any():
        raise InvalidInputError(f"label has no voxels of value {liver_value}", path=label)
    mean_hu = float(hu[mask].mean())
    if not -50.0 <= mean_hu <= 250.0:
        raise InvalidInputError(f"mean HU inside the label is {mean_hu:.0f}: label does not line up", path=label)
    air = float((hu[mask] < AIR_HU).mean())
    if air > MAX_AIR_IN_LABEL:
        raise InvalidInputError(f"{air:.1%} of the label lies on air (< {AIR_HU:g} HU): label does not line up with "
                                "the image (flipped or shifted?)", path=label)  # fmt: skip
    return RealCase(name, hu, mask.astype(np.uint8), affine)


def cached_real_case(name: str, image: Path, label: Path, liver_value: int, spacing: tuple[float, float, float],
                     digests: dict[str, str], cache_dir: Path) -> RealCase:  # fmt: skip
    """`prepare_real_case` through an on-disk cache keyed by the file digests and spacing (each cache file's
    content digest checked on reading; a mismatch is prepared again)."""
    folder = cache_subdir("real", root=cache_dir)
    key = hashlib.sha256(f"{sorted(digests.items())}|{liver_value}|{spacing}|3".encode()).hexdigest()[:24]
    target = folder / f"{name}-{key}.npz"
    cached = load_npz(target) if target.is_file() else None
    if cached is not None and {"image", "label", "affine"} <= cached.keys():
        return RealCase(name, cached["image"], cached["label"], cached["affine"])
    case = prepare_real_case(name, image, label, liver_value, spacing)
    check_sources_unchanged({"image": image, "label": label}, digests)
    save_npz(target, {"image": case.image, "label": case.label, "affine": case.affine})
    return case
