"""Turn a tissue-class map into a CT-like image in HU: phase-dependent priors, texture, blur, thick slices, noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.train.synth.anatomy import PAD
from medseg.train.synth.fields import gaussian_blur, resample_axis_thick, smooth_noise
from medseg.train.synth.tissues import tissue_table


@dataclass(frozen=True)
class AppearanceParams:
    """Ranges of the appearance randomisation (from the training config)."""

    p_random_intensity: float = 0.2
    noise_sd: tuple[float, float] = (3.0, 20.0)
    blur_sigma: tuple[float, float] = (0.2, 1.0)
    p_thick_slices: float = 0.35
    thick_factor: tuple[float, float] = (1.3, 2.7)
    bias_hu: tuple[float, float] = (0.0, 25.0)


def sample_class_means(rng: np.random.Generator, random_mode: bool) -> tuple[str, dict[int, tuple[float, float]]]:
    """Per-class (mean, sd) for one synthetic case; SynthSeg-style uniform means in `random_mode`."""
    tab = tissue_table()
    phase = str(rng.choice(tab.phases, p=np.asarray(tab.phase_p) / sum(tab.phase_p)))
    lesion = tab.raw["lesion"]
    oral = tab.raw["oral_contrast"]
    oral_on = rng.random() < oral["probability"]
    out: dict[int, tuple[float, float]] = {}
    for cid in tab.hu:
        lo, hi = tab.prior(cid, phase)
        if cid in tab.oral_contrast_ids and oral_on and rng.random() < 0.7:
            lo, hi = oral["hu"]
        out[cid] = (rng.uniform(lo, hi), rng.uniform(*tab.sd[cid]))
    liver_mean = out[tab.ids["liver"]][0]
    if rng.random() < lesion["p_cyst"]:
        out[tab.ids["liver_lesion"]] = (rng.uniform(*lesion["cyst_hu"]), rng.uniform(2, 6))
    else:
        key = "hyperdense_offset" if rng.random() < lesion["p_hyper"] else "hypodense_offset"
        out[tab.ids["liver_lesion"]] = (liver_mean + rng.uniform(*lesion[key]), rng.uniform(*tab.sd[tab.ids["liver"]]))
    if random_mode:
        for cid in out:
            out[cid] = (rng.uniform(-300.0, 400.0), rng.uniform(0.0, 25.0))
        phase = "random"
    return phase, out


def render(tissues: np.ndarray, rng: np.random.Generator, params: AppearanceParams) -> tuple[np.ndarray, str]:
    """HU image for a tissue map, with texture, partial-volume blur, thick-slice simulation, bias field and noise."""
    random_mode = rng.random() < params.p_random_intensity
    phase, stats = sample_class_means(rng, random_mode)
    n = max(stats) + 1
    means = np.full(max(n, PAD + 1), -1024.0, np.float32)
    sds = np.zeros_like(means)
    for cid, (m, s) in stats.items():
        means[cid], sds[cid] = m, s
    texture = smooth_noise(tissues.shape, rng.uniform(1.0, 2.5), rng)
    img = means[tissues] + sds[tissues] * texture
    sigma = rng.uniform(*params.blur_sigma, size=3)
    img = gaussian_blur(img, tuple(float(s) for s in sigma))
    if rng.random() < params.p_thick_slices:
        f = (1.0, 1.0, rng.uniform(*params.thick_factor))
        if rng.random() < 0.3:
            f = (rng.uniform(1.0, 1.4), f[1], f[2])
        img = resample_axis_thick(img, f)
    img += rng.uniform(*params.bias_hu) * smooth_noise(tissues.shape, rng.uniform(20.0, 40.0), rng)
    noise = rng.standard_normal(tissues.shape).astype(np.float32)
    if rng.random() < 0.4:
        noise = gaussian_blur(noise, (0.7, 0.7, 0.3))
        noise /= max(float(noise.std()), 1e-6)
    img += rng.uniform(*params.noise_sd) * noise
    img[tissues == PAD] = -1024.0
    return img.astype(np.float32), phase
