"""Training data: an endless stream of (image, label) patches mixing synthetic CT and real CT pairs.

Images leave here windowed and scaled to [0, 1] exactly like inference input (`ScaleIntensityRange(clip=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.errors import InvalidInputError
from medseg.preprocess import hu_window  # the one HU window, as at inference
from medseg.train.config import TrainConfig
from medseg.train.manifest import Manifest
from medseg.train.realdata import RealCase, cached_real_case
from medseg.train.robust import RobustParams, archive_augment
from medseg.train.synth.anatomy import AnatomyParams
from medseg.train.synth.appearance import AppearanceParams
from medseg.train.synth.fields import gaussian_blur
from medseg.train.synth.generator import synth_patch
from medseg.train.synth.prepare import AnatomyCase, cached_case
from medseg.train.synth.spatial import SpatialParams, sampling_grid, warp


@dataclass
class CaseSets:
    """Prepared cases of one manifest split, loaded once in the main process (shared with forked workers)."""

    anatomy: list[AnatomyCase]
    real: list[RealCase]


def load_cases(manifest: Manifest, split: str, cfg: TrainConfig, data_root: Path, cache_dir: Path,
               manifest_path: Path | None = None) -> CaseSets:  # fmt: skip
    """Prepare (or load from cache) every label map and real pair of `split`; a case refused while preparing is
    named with its manifest."""
    anatomy, real = [], []
    for e in manifest.split(split):
        try:
            if e.kind == "label_map":
                if e.labels_json is None:
                    raise InvalidInputError("a label_map needs labels_json")
                anatomy.append(cached_case(data_root / e.label, data_root / e.labels_json, cfg.spacing,
                                           e.sha256["label"], cache_dir, e.sha256.get("labels_json", "")))  # fmt: skip
            else:
                if e.image is None or e.liver_value is None:
                    raise InvalidInputError("a ct_pair needs image and liver_value")
                real.append(cached_real_case(e.case_id, data_root / e.image, data_root / e.label, e.liver_value,
                                             cfg.spacing, e.sha256, cache_dir))  # fmt: skip
        except InvalidInputError as exc:
            where = f" ({exc.path})" if exc.path else ""
            raise InvalidInputError(f"case {e.case_id}: {exc.message}{where}", path=manifest_path or exc.path,
                                    hint=exc.hint) from exc  # fmt: skip
    return CaseSets(anatomy, real)


def shift_organ_hu(hu: np.ndarray, mask: np.ndarray, shift: float) -> np.ndarray:
    """`hu` with `shift` HU added inside `mask`, faded over about one voxel at its edge (a blurred mask): another
    contrast phase's enhancement of the organ against unchanged surroundings, the label unchanged."""
    return hu + np.float32(shift) * gaussian_blur(mask.astype(np.float32), (0.7, 0.7, 0.7))


def real_patch(
    case: RealCase, rng: np.random.Generator, cfg: TrainConfig, positive: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A spatially and photometrically augmented patch (HU, label) of a real CT."""
    patch = cfg.data.patch_size
    pts = np.argwhere(case.label > 0) if positive else np.argwhere(case.image > -500)
    centre = pts[rng.integers(len(pts))] + rng.integers(-patch[0] // 6, patch[0] // 6 + 1, size=3)
    size = tuple(int(np.ceil(p * 1.45)) for p in patch)
    lo = centre - np.asarray(size) // 2
    img = np.full(size, -1024.0, np.float32)
    lab = np.zeros(size, np.uint8)
    src = tuple(slice(max(a, 0), min(a + s, n)) for a, s, n in zip(lo, size, case.image.shape, strict=True))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo, strict=True))
    img[dst], lab[dst] = case.image[src], case.label[src]
    sp = cfg.augment.spatial
    grid = sampling_grid(patch, size, rng, SpatialParams(sp.rotate_deg, sp.scale, sp.anisotropy, sp.elastic_vox))
    out = warp(img, grid, "bilinear", -1024.0)
    out_lab = warp(lab.astype(np.float32), grid, "nearest", 0.0).round().astype(np.uint8)
    aug = cfg.augment
    if aug.p_real_liver_shift > 0 and rng.random() < aug.p_real_liver_shift:
        out = shift_organ_hu(out, out_lab > 0, rng.uniform(*aug.real_liver_shift_hu))
    out = out * rng.uniform(*aug.real_hu_scale) + rng.uniform(*aug.real_hu_shift)
    if rng.random() < 0.3:
        out = gaussian_blur(out, (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.2, 1.2)))
    out += rng.uniform(*aug.real_noise_sd) * rng.standard_normal(out.shape).astype(np.float32)
    return out, out_lab


class PatchStream(torch.utils.data.IterableDataset):
    """Endless patches: synthetic with probability 1 - real_fraction, positive with probability pos_fraction
    (real_pos_fraction for real CT when set).

    Each sample carries `labelled` (one flag per class): synthetic patches label every organ, real CT pairs only
    background and liver (the partial-label loss merges the other classes into background for them).
    """

    def __init__(self, cases: CaseSets, cfg: TrainConfig, seed: int, rank: int = 0) -> None:
        super().__init__()
        if not cases.anatomy and not cases.real:
            raise InvalidInputError("the training split of the manifest is empty")
        self.cases, self.cfg, self.seed, self.rank = cases, cfg, seed, rank
        a = cfg.augment.appearance
        self.appearance = AppearanceParams(a.p_random_intensity, a.noise_sd, a.blur_sigma, a.p_thick_slices,
                                           a.thick_factor, a.bias_hu)  # fmt: skip
        s = cfg.augment.spatial
        self.spatial = SpatialParams(s.rotate_deg, s.scale, s.anisotropy, s.elastic_vox)
        self.robust = RobustParams(**cfg.augment.robust.model_dump())
        self.anatomy = AnatomyParams(**cfg.augment.anatomy.model_dump())
        self.organs = cfg.organs
        self.liver = 1 + self.organs.index("liver")
        self.start_index = 0

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        u = rng.random()
        use_real = self.cases.real and (not self.cases.anatomy or rng.random() < cfg.data.real_fraction)
        positive = u < (cfg.data.real_positive_fraction if use_real else cfg.data.pos_fraction)
        if use_real:
            case = self.cases.real[rng.integers(len(self.cases.real))]
            hu, lab = real_patch(case, rng, cfg, positive)
            lab = lab * np.uint8(self.liver)
            labelled = np.zeros(len(self.organs) + 1, bool)
            labelled[[0, self.liver]] = True
        else:
            anat = self.cases.anatomy[rng.integers(len(self.cases.anatomy))]
            s = synth_patch(anat, rng, cfg.data.patch_size, positive, self.spatial, self.appearance, self.organs,
                            self.anatomy)
            hu, lab = s.image, s.label
            labelled = np.ones(len(self.organs) + 1, bool)
        hu, lab = archive_augment(hu, lab, rng, self.robust)
        img = hu_window(hu, cfg.intensity.a_min, cfg.intensity.a_max)
        if rng.random() < 0.25:
            img = img ** rng.uniform(0.7, 1.5)
        return {"image": torch.from_numpy(img)[None], "label": torch.from_numpy(lab.astype(np.int64))[None],
                "labelled": torch.from_numpy(labelled)}

    def __iter__(self):  # type: ignore[no-untyped-def]
        info = torch.utils.data.get_worker_info()
        worker, nworkers = (info.id, info.num_workers) if info else (0, 1)
        i = self.start_index + worker
        while True:
            yield self.sample(np.random.default_rng([self.seed, self.rank, i]))
            i += nworkers
