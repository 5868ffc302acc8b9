"""Synthesise the anatomy a label map lacks (body, fat, muscle, spine, ribs, lungs, heart, gas, liver vessels, lesions,
the scanner table and arms at the sides).

Works on a region of an `AnatomyCase` and returns a tissue-class map (ids from `tissues.yaml`). Everything is
randomised per call; organs from the label map are never overwritten except by structures that keep their label
(vessels and lesions inside the liver stay liver).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.train.synth.fields import smooth_noise
from medseg.train.synth.tissues import tissue_table

PAD = 42


@dataclass
class Region:
    """A box of an AnatomyCase: arrays cut (and padded) to the box; `origin` is the box corner in case voxels."""

    classes: np.ndarray
    fov: np.ndarray
    hull_dist: np.ndarray
    spine: np.ndarray
    dome: np.ndarray
    origin: np.ndarray
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class AnatomyParams:
    """Probabilities of optional synthesised structures (from the training config); 0 draws no random number, so a
    recipe that leaves one off renders exactly as before it existed."""

    p_diaphragm: float = 0.0


def _coords(shape: tuple[int, int, int], origin: np.ndarray, spacing: tuple[float, float, float]) -> list[np.ndarray]:
    return [((np.arange(n) + o) * s).reshape([-1 if a == d else 1 for a in range(3)])
            for d, (n, o, s) in enumerate(zip(shape, origin, spacing, strict=True))]  # fmt: skip


def _spine(t: np.ndarray, reg: Region, rng: np.random.Generator, free: np.ndarray) -> None:
    ids = tissue_table().ids
    sx, sy, _sz = reg.spacing
    x, y, z = _coords(t.shape, reg.origin, reg.spacing)
    cx = (reg.spine[:, 0] * sx)[None, None, :]
    cy = (reg.spine[:, 1] * sy)[None, None, :]
    dx, dy = x - cx, y - cy
    r = rng.uniform(15.0, 24.0)
    ellip = np.sqrt(dx**2 + (dy * rng.uniform(1.0, 1.25)) ** 2)
    period, disc = rng.uniform(26.0, 34.0), rng.uniform(5.0, 9.0)
    is_disc = ((z + rng.uniform(0, period)) % period) < disc
    cortex = rng.uniform(1.5, 3.5)
    body = ellip < r
    t[free & body & ~is_disc & (ellip >= r - cortex)] = ids["bone_cortex"]
    t[free & body & ~is_disc & (ellip < r - cortex)] = ids["bone_marrow"]
    t[free & body & is_disc] = ids["disc"]
    canal = (np.abs(dx) < rng.uniform(7, 10)) & (dy < -r) & (dy > -r - 18)
    t[free & canal] = ids["soft_tissue"]
    arch = ((np.abs(dx) < 22) & (dy <= -r - 18) & (dy > -r - 26)) | (
        (np.abs(dx) < 6) & (dy <= -r - 18) & (dy > -r - 50)
    )
    t[free & arch & ~is_disc] = ids["bone_cortex"]
    for side in (-1, 1):
        para = ((dx - side * 35) / 22) ** 2 + ((dy + r + 35) / 20) ** 2 < 1
        t[free & para & (t == 0)] = ids["muscle"]
        psoas = ((dx - side * (r + 15)) / 14) ** 2 + ((dy + 5) / 16) ** 2 < 1
        t[free & psoas & (t == 0) & (rng.random() < 0.8)] = ids["muscle"]


def _liver_details(t: np.ndarray, rng: np.random.Generator) -> None:
    ids = tissue_table().ids
    liver = t == ids["liver"]
    if not liver.any():
        return
    if rng.random() < 0.9:
        scale = rng.uniform(4.0, 8.0)
        n1, n2 = smooth_noise(t.shape, scale, rng), smooth_noise(t.shape, scale, rng)
        w = rng.uniform(0.08, 0.2)
        t[liver & (np.abs(n1) < w) & (np.abs(n2) < w)] = ids["liver_vessel"]
    if rng.random() < 0.45:
        pts = np.argwhere(liver)
        for _ in range(rng.integers(1, 6)):
            c = pts[rng.integers(len(pts))]
            rad = rng.uniform(1.5, 10.0) * rng.uniform(0.7, 1.3, size=3)
            sl = tuple(slice(max(0, int(ci - ri) - 1), min(n, int(ci + ri) + 2))
                       for ci, ri, n in zip(c, rad, t.shape, strict=True))  # fmt: skip
            g = np.ogrid[sl]
            wobble = 1.0 + 0.15 * smooth_noise(tuple(len(np.ravel(a)) for a in g), 3.0, rng)
            inside = sum(((gi - ci) / ri) ** 2 for gi, ci, ri in zip(g, c, rad, strict=True)) < wobble
            sub = t[sl]
            sub[inside & np.isin(sub, [ids["liver"], ids["liver_vessel"]])] = ids["liver_lesion"]


# Synthesised filler the diaphragm may replace; organs from the label map, the heart, bone and the wall stay.
DIAPHRAGM_REPLACES = ("soft_tissue", "visceral_fat", "lung", "bowel_gas")


def _diaphragm(t: np.ndarray, rng: np.random.Generator, free: np.ndarray) -> None:
    """A muscle sheet of one or two voxels on the liver's upper part where it meets filler tissue or lung (`free`:
    outside every organ of the label map, so gas inside the stomach stays).

    Real CT shows the diaphragm (about 50 HU) between the liver and the lung bases, the wall and the fat. Its absence
    was a suspected cause of the rim by which every model so far over-segments real livers; a run with it (stage 4,
    docs/training.md) left the rim unchanged, so it stays off by default.
    """
    from scipy import ndimage

    ids = tissue_table().ids
    liver = t == ids["liver"]
    if not liver.any():
        return
    k = np.nonzero(liver.any(axis=(0, 1)))[0]
    level = int(k.min() + rng.uniform(0.25, 0.45) * (k.max() - k.min()))
    sheet = ndimage.binary_dilation(liver, iterations=int(rng.choice([1, 2], p=[0.6, 0.4]))) & ~liver
    sheet[:, :, :level] = False
    t[sheet & free & np.isin(t, [ids[n] for n in DIAPHRAGM_REPLACES])] = ids["muscle"]


def _bowel_gas(t: np.ndarray, reg: Region, rng: np.random.Generator) -> None:
    ids = tissue_table().ids
    bowel = np.isin(t, [ids[n] for n in ("stomach", "duodenum", "colon", "intestine", "rectum")])
    if not bowel.any():
        return
    gas = smooth_noise(t.shape, rng.uniform(2.0, 4.0), rng) > rng.uniform(1.0, 2.4)
    t[bowel & gas] = ids["bowel_gas"]
    stomach = t == ids["stomach"]
    if stomach.any() and rng.random() < 0.4:
        j = np.nonzero(stomach)[1]
        level = np.quantile(j, rng.uniform(0.6, 0.95))
        yy = np.arange(t.shape[1])[None, :, None]
        t[stomach & (yy > level)] = ids["bowel_gas"]


def build_tissues(reg: Region, rng: np.random.Generator, params: AnatomyParams = AnatomyParams()) -> np.ndarray:
    """Tissue-class map for a region: organs from the label map, the rest synthesised plausibly."""
    ids = tissue_table().ids
    t = reg.classes.copy()
    shape = t.shape
    organ = t > 0
    margin = rng.uniform(20.0, 60.0) + 6.0 * smooth_noise(shape, 12.0, rng)
    hd = reg.hull_dist
    body = hd < margin
    fat_th = np.minimum(rng.uniform(5.0, 35.0), 0.6 * margin)
    mus_th = np.clip(rng.uniform(6.0, 18.0), 0, margin - fat_th - 2)
    wall_out = margin - fat_th
    t[~organ & body & (hd >= wall_out)] = ids["subcut_fat"]
    t[~organ & body & (hd < wall_out) & (hd >= wall_out - mus_th)] = ids["muscle"]
    interior = ~organ & body & (hd < wall_out - mus_th)
    soft = smooth_noise(shape, rng.uniform(3.0, 10.0), rng) > rng.uniform(-0.6, 0.9)
    t[interior & soft] = ids["soft_tissue"]
    t[interior & ~soft] = ids["visceral_fat"]
    if rng.random() < 0.5:
        pockets = smooth_noise(shape, 2.5, rng) > rng.uniform(1.6, 2.6)
        t[interior & pockets] = ids["bowel_gas"]
    _spine(t, reg, rng, free=~organ & body)
    if rng.random() < 0.7:
        _ribs(t, reg, rng, hd, wall_out, mus_th, organ)
    if rng.random() < 0.9:
        _lungs(t, reg, rng, interior)
    if rng.random() < 0.85:
        _heart(t, reg, rng, free=~organ & body & (hd < wall_out - mus_th))
    _bowel_gas(t, reg, rng)
    if params.p_diaphragm > 0 and rng.random() < params.p_diaphragm:
        _diaphragm(t, rng, free=~organ)
    _liver_details(t, rng)
    t[~body & ~organ] = ids["outside_air"]
    outside = ~body & ~organ
    if rng.random() < 0.6:
        _table(t, reg, rng, body, outside)
    if rng.random() < 0.3:
        _arms(t, reg, rng, body, outside)
    t[~reg.fov] = PAD
    return t


def _ribs(t: np.ndarray, reg: Region, rng: np.random.Generator, hd: np.ndarray, wall_out: np.ndarray,
          mus_th: np.ndarray, organ: np.ndarray) -> None:  # fmt: skip
    ids = tissue_table().ids
    x, y, z = _coords(t.shape, reg.origin, reg.spacing)
    sx, sy = reg.spacing[:2]
    cx = (reg.spine[:, 0] * sx)[None, None, :]
    cy = (reg.spine[:, 1] * sy)[None, None, :]
    angle = np.arctan2(y - cy, x - cx)
    period, width = rng.uniform(22.0, 32.0), rng.uniform(5.0, 9.0)
    slope = rng.uniform(80.0, 160.0)
    phase = (z - slope * np.abs(np.sin(angle)) + rng.uniform(0, period)) % period
    inner = wall_out - np.minimum(mus_th, rng.uniform(4.0, 8.0))
    band = (hd < inner + rng.uniform(4.0, 7.0)) & (hd >= inner)
    dome_z = np.median(reg.dome) * reg.spacing[2] + reg.origin[2] * reg.spacing[2]
    upper = z > dome_z - rng.uniform(90.0, 180.0)
    rib = band & (phase < width) & upper & ~organ
    t[rib] = ids["bone_cortex"]


def _lungs(t: np.ndarray, reg: Region, rng: np.random.Generator, interior: np.ndarray) -> None:
    ids = tissue_table().ids
    k = np.arange(t.shape[2])[None, None, :] + reg.origin[2]
    gap = rng.uniform(1.0, 3.0)
    above = k > reg.dome[:, :, None] + gap
    x, y, _ = _coords(t.shape, reg.origin, reg.spacing)
    mid_z = reg.spine[:, :].mean(0)
    dx = x - mid_z[0] * reg.spacing[0]
    dy = y - mid_z[1] * reg.spacing[1]
    mediastinum = (np.abs(dx) < rng.uniform(25.0, 50.0)) & (dy > -10.0)
    heart = mediastinum & (dy > 20.0)
    lung = above & interior & ~mediastinum
    t[lung] = ids["lung"]
    t[above & interior & heart] = ids["soft_tissue"]


def _heart(t: np.ndarray, reg: Region, rng: np.random.Generator, free: np.ndarray) -> None:
    """An ellipsoidal heart (myocardium, blood pool, pericardial fat) on the diaphragm, left of the spine, anterior.

    The heart meets the liver dome in the upper slices of every abdominal CT and enhances like liver; without it the
    model learnt to call it liver (seen on real CT).
    """
    ids = tissue_table().ids
    x, y, z = _coords(t.shape, reg.origin, reg.spacing)
    sx, sy, sz = reg.spacing
    spine = reg.spine.mean(0)
    cx = spine[0] * sx - rng.uniform(15.0, 55.0)
    cy = spine[1] * sy + rng.uniform(60.0, 110.0)
    i = int(np.clip(round(cx / sx - reg.origin[0]), 0, t.shape[0] - 1))
    j = int(np.clip(round(cy / sy - reg.origin[1]), 0, t.shape[1] - 1))
    a, b, c = rng.uniform(45.0, 70.0), rng.uniform(35.0, 50.0), rng.uniform(35.0, 55.0)
    cz = reg.dome[i, j] * sz + rng.uniform(0.0, 0.6) * c
    theta = rng.uniform(0.2, 0.8)
    u = ((x - cx) * np.cos(theta) - (y - cy) * np.sin(theta)) / a
    v = ((x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)) / b
    r = np.sqrt(u**2 + v**2 + ((z - cz) / c) ** 2)
    r = r * (1.0 + 0.06 * smooth_noise(t.shape, 8.0, rng))
    wall = rng.uniform(0.15, 0.3)
    t[free & (r >= 1.0) & (r < 1.0 + rng.uniform(0.02, 0.12))] = ids["visceral_fat"]
    t[free & (r < 1.0) & (r >= 1.0 - wall)] = ids["heart_muscle"]
    t[free & (r < 1.0 - wall)] = ids["heart_blood"]


def _table(t: np.ndarray, reg: Region, rng: np.random.Generator, body: np.ndarray, outside: np.ndarray) -> None:
    """The scanner table under the patient's back: a shallow curved shell (carbon fibre, foam core) and often a pad.

    Real archives show it in every abdominal CT; only drawn where the region reaches below the back (air there)."""
    ids = tissue_table().ids
    rows = np.nonzero(body.any(axis=(0, 2)))[0]
    if rows.size == 0 or rows[0] == 0:
        return
    x, y, _ = _coords(t.shape, reg.origin, reg.spacing)
    cx = reg.spine[:, 0].mean() * reg.spacing[0]
    back = (rows[0] + reg.origin[1]) * reg.spacing[1]
    top = back - rng.uniform(0.0, 25.0) - ((x - cx) / rng.uniform(250.0, 600.0)) ** 2 * rng.uniform(0.0, 60.0)
    pad = rng.uniform(0.0, 30.0) if rng.random() < 0.6 else 0.0
    shell, core = max(rng.uniform(1.5, 4.0), reg.spacing[1]), rng.uniform(8.0, 40.0)
    wide = np.abs(x - cx) < rng.uniform(200.0, 260.0)
    depth = top - y
    t[outside & wide & (depth >= 0) & (depth < pad)] = ids["table_pad"]
    d = depth - pad
    skin = (d >= 0) & ((d < shell) | ((d >= shell + core) & (d < 2 * shell + core)))
    t[outside & wide & skin] = ids["table_shell"]
    t[outside & wide & (d >= shell) & (d < shell + core)] = ids["table_core"]


def _arms(t: np.ndarray, reg: Region, rng: np.random.Generator, body: np.ndarray, outside: np.ndarray) -> None:
    """Arms down at the sides (trauma, frail patients): skin fat, muscle and a humerus, just outside the body."""
    ids = tissue_table().ids
    cols = np.nonzero(body.any(axis=(1, 2)))[0]
    rows = np.nonzero(body.any(axis=(0, 2)))[0]
    if cols.size == 0:
        return
    x, y, _ = _coords(t.shape, reg.origin, reg.spacing)
    sx, sy = reg.spacing[:2]
    cy = (rows.mean() + reg.origin[1]) * sy + rng.uniform(-30.0, 30.0)
    for edge, side in ((cols[0], -1.0), (cols[-1], 1.0)):
        if edge in (0, t.shape[0] - 1):
            continue
        a, b = rng.uniform(30.0, 50.0), rng.uniform(35.0, 60.0)
        cx = (edge + reg.origin[0]) * sx + side * (a + rng.uniform(2.0, 40.0))
        r = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) + np.zeros(t.shape)
        arm = outside & (r < 1.0)
        t[arm] = ids["subcut_fat"]
        t[arm & (r < rng.uniform(0.6, 0.85))] = ids["muscle"]
        bone = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) + np.zeros(t.shape)
        hr = rng.uniform(9.0, 14.0)
        t[arm & (bone < hr)] = ids["bone_cortex"]
        t[arm & (bone < hr - rng.uniform(2.0, 4.0))] = ids["bone_marrow"]
