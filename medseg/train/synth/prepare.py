"""Precompute label maps for the generator: unified classes, RAS at the model spacing, cropped, with anatomy guides.

Done once per (file digest, spacing) and cached as `.npz` outside the repository, so that on-the-fly generation
only thresholds and indexes cached fields. Arrays are indexed [i, j, k] = towards Right, Anterior, Superior.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay, QhullError

from medseg.errors import InvalidInputError
from medseg.train.synth.tissues import label_names, source_lut, tissue_table

PREP_VERSION = "4"
MARGIN_MM = (75.0, 75.0, 45.0)


@dataclass
class AnatomyCase:
    """One prepared label map: `classes` (uint8 generator ids, 0 = unlabelled), `fov` (inside the scan), guides."""

    name: str
    classes: np.ndarray
    fov: np.ndarray
    hull_dist: np.ndarray
    spine: np.ndarray
    dome: np.ndarray
    spacing: tuple[float, float, float]

    def save(self, path: Path) -> None:
        """Write the prepared arrays (with their content digest) to the cache file `path` atomically."""
        from medseg.train.cachefile import save_npz

        arrays = {"classes": self.classes, "fov": self.fov, "hull_dist": self.hull_dist, "spine": self.spine,
                  "dome": self.dome, "spacing": np.asarray(self.spacing), "name": np.asarray(self.name)}  # fmt: skip
        save_npz(path, arrays)

    @classmethod
    def load(cls, path: Path) -> AnatomyCase:
        """Read a cache file; ValueError when its content digest does not match (the file is then removed)."""
        from medseg.train.cachefile import load_npz

        z = load_npz(path)
        if z is None:
            raise ValueError(f"{path}: cache file changed or damaged")
        return cls(
                str(z["name"]), z["classes"], z["fov"], z["hull_dist"].astype(np.float32), z["spine"], z["dome"],
                tuple(float(s) for s in z["spacing"]),
            )  # fmt: skip


def default_cache_dir() -> Path:
    """`medseg.cache.cache_dir()`: `$MEDSEG_CACHE_DIR` or `~/.cache/medseg` (never inside the repository), created
    owner-only where missing (`cache_subdir`: under umask 002 a 0775 root locks the user out of the export cache)."""
    from medseg.cache import cache_subdir

    return cache_subdir()


def check_named(data: np.ndarray, named: set[int], path: Path, labels_json: Path) -> None:
    """Refuse a label map holding a value its labels.json does not name (before resampling, which could drop a small
    island, and before the lookup table, which would make it background silently)."""
    if data.size and data.min() < 0:
        raise InvalidInputError(f"label map holds negative values ({int(data.min())})", path=path)
    values = set(np.flatnonzero(np.bincount(data.ravel())).tolist()) if data.size else set()
    unnamed = sorted(values - named - {0})
    if unnamed:
        shown = ", ".join(str(v) for v in unnamed[:10]) + (" ..." if len(unnamed) > 10 else "")
        raise InvalidInputError(f"label values {shown} are not named in {labels_json.name} ({labels_json})", path=path,
                                hint="Name every value of the map in its labels.json, or fix the map.")  # fmt: skip


def resample_labels_ras(path: Path, spacing: tuple[float, float, float],
                        labels_json: Path | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Label map and field-of-view mask, reoriented to RAS and resampled (nearest) to `spacing`; with `labels_json`,
    every value of the map as stored must be one it names."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj).astype(np.int32)
    except Exception as exc:
        raise InvalidInputError(f"cannot read label map: {exc}", path=path) from exc
    if labels_json is not None:
        check_named(data, set(label_names(labels_json)), path, labels_json)
    corners = np.array([[i, j, k, 1] for i in (0, data.shape[0] - 1) for j in (0, data.shape[1] - 1)
                        for k in (0, data.shape[2] - 1)], float)  # fmt: skip
    world = (img.affine @ corners.T).T[:, :3]
    lo, hi = world.min(0), world.max(0)
    shape = tuple(int(np.floor((b - a) / s)) + 1 for a, b, s in zip(lo, hi, spacing, strict=True))
    out_affine = np.diag([*spacing, 1.0])
    out_affine[:3, 3] = lo
    labels_img = nib.Nifti1Image(data, img.affine)
    out = resample_from_to(labels_img, (shape, out_affine), order=0, cval=0)
    fov = resample_from_to(nib.Nifti1Image(np.ones(data.shape, np.uint8), img.affine), (shape, out_affine), order=0)
    return np.asarray(out.dataobj).astype(np.int32), np.asarray(fov.dataobj).astype(bool)


def _slice_hulls(organs: np.ndarray) -> np.ndarray:
    """Per-axial-slice convex hull of all organs; slices without organs copy the nearest slice that has some."""
    hull = np.zeros_like(organs)
    nz = organs.shape[2]
    has = np.zeros(nz, bool)
    for k in range(nz):
        pts = np.argwhere(organs[:, :, k])
        if len(pts) < 4:
            continue
        try:
            tri = Delaunay(pts[ConvexHull(pts).vertices])
        except QhullError:
            continue
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0) + 1
        box = np.stack(np.meshgrid(np.arange(x0, x1), np.arange(y0, y1), indexing="ij"), -1).reshape(-1, 2)
        hull[x0:x1, y0:y1, k] = (tri.find_simplex(box) >= 0).reshape(x1 - x0, y1 - y0)
        hull[:, :, k] |= organs[:, :, k]
        has[k] = True
    if not has.any():
        raise InvalidInputError("label map has no organ voxels")
    idx = np.flatnonzero(has)
    for k in np.flatnonzero(~has):
        hull[:, :, k] = hull[:, :, idx[np.argmin(np.abs(idx - k))]]
    return hull


def _spine_line(classes: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """(nz, 2) vertebral-body centre per slice: behind the aorta or between the kidneys, smoothed along z."""
    ids = tissue_table().ids
    nz = classes.shape[2]
    centre = np.full((nz, 2), np.nan)
    back = 28.0 / spacing[1]
    for k in range(nz):
        sl = classes[:, :, k]
        aorta = np.argwhere(sl == ids["aorta"])
        kid_r, kid_l = np.argwhere(sl == ids["kidney_right"]), np.argwhere(sl == ids["kidney_left"])
        if len(aorta) > 3:
            c = aorta.mean(0)
            centre[k] = (c[0] + 12.0 / spacing[0], c[1] - back)
        elif len(kid_r) > 3 and len(kid_l) > 3:
            cr, cl = kid_r.mean(0), kid_l.mean(0)
            centre[k] = ((cr[0] + cl[0]) / 2, min(cr[1], cl[1]) + 5.0 / spacing[1])
    ok = ~np.isnan(centre[:, 0])
    if not ok.any():
        organs = np.argwhere(classes > 0)
        c = organs.mean(0)
        centre[:] = (c[0], organs[:, 1].min() + 10.0 / spacing[1])
        return centre.astype(np.float32)
    for d in range(2):
        centre[:, d] = np.interp(np.arange(nz), np.flatnonzero(ok), centre[ok, d])
        centre[:, d] = ndimage.gaussian_filter1d(centre[:, d], 20.0 / spacing[2], mode="nearest")
    return centre.astype(np.float32)


def _dome(classes: np.ndarray) -> np.ndarray:
    """(nx, ny) height just above the upper abdominal organs (liver, spleen, stomach); lungs start above it."""
    ids = tissue_table().ids
    upper = np.isin(classes, [ids["liver"], ids["spleen"], ids["stomach"], ids["esophagus"], ids["aorta"]])
    any_col = upper.any(2)
    top = np.where(any_col, classes.shape[2] - 1 - np.argmax(upper[:, :, ::-1], axis=2), -1).astype(np.float32)
    if not any_col.any():
        return np.full(classes.shape[:2], classes.shape[2], np.float32)
    _, (ii, jj) = ndimage.distance_transform_edt(~any_col, return_indices=True)
    filled = top[ii, jj]
    return ndimage.gaussian_filter(filled, 3.0).astype(np.float32) + 1.0


def _anterior_posterior_flipped(classes: np.ndarray) -> bool:
    """True when the kidneys lie anterior to the liver: the map's affine has a wrong A/P sign (seen in BTCV)."""
    ids = tissue_table().ids
    liver = np.argwhere(classes == ids["liver"])
    kidneys = np.argwhere(np.isin(classes, [ids["kidney_right"], ids["kidney_left"]]))
    if len(liver) == 0 or len(kidneys) == 0:
        return False
    return bool(kidneys[:, 1].mean() > liver[:, 1].mean())


def prepare_label_map(path: Path, labels_json: Path, spacing: tuple[float, float, float]) -> AnatomyCase:
    """Read, unify, resample and crop one label map, and derive the anatomy guides."""
    lut = source_lut(labels_json)
    raw, fov = resample_labels_ras(path, spacing, labels_json)
    if raw.max() >= len(lut) or raw.min() < 0:
        raise InvalidInputError(f"label value {raw.max()} not in labels.json", path=path)
    classes = lut[raw]
    if _anterior_posterior_flipped(classes):
        classes, fov = classes[:, ::-1, :].copy(), fov[:, ::-1, :].copy()
    organs = classes > 0
    nz_idx = np.argwhere(organs)
    if len(nz_idx) == 0:
        raise InvalidInputError("label map has no organ voxels", path=path)
    margin = [round(m / s) for m, s in zip(MARGIN_MM, spacing, strict=True)]
    lo = np.maximum(nz_idx.min(0) - margin, 0)
    hi = np.minimum(nz_idx.max(0) + margin + 1, classes.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    classes, fov, organs = classes[box], fov[box], organs[box]
    hull = _slice_hulls(organs)
    hull_dist = np.zeros(hull.shape, np.float32)
    for k in range(hull.shape[2]):
        hull_dist[:, :, k] = ndimage.distance_transform_edt(~hull[:, :, k], sampling=spacing[:2])
    return AnatomyCase(
        name=path.name.split(".")[0], classes=classes.astype(np.uint8), fov=fov, hull_dist=hull_dist.astype(np.float16),
        spine=_spine_line(classes, spacing), dome=_dome(classes), spacing=spacing,
    )  # fmt: skip


def cached_case(path: Path, labels_json: Path, spacing: tuple[float, float, float], sha256: str,
                cache_dir: Path | None = None, labels_json_sha256: str = "") -> AnatomyCase:  # fmt: skip
    """`prepare_label_map` through the on-disk cache keyed by the label and labels_json digests, spacing and
    preparation version (a cache file whose content digest does not match is prepared again)."""
    from medseg.cache import cache_subdir

    cache_dir = cache_subdir("anatomy", root=cache_dir or default_cache_dir())
    key = hashlib.sha256(f"{sha256}|{labels_json_sha256}|{spacing}|{PREP_VERSION}".encode()).hexdigest()[:24]
    target = cache_dir / f"{path.name.split('.')[0]}-{key}.npz"
    if target.is_file():
        try:
            return AnatomyCase.load(target)
        except (OSError, ValueError, KeyError):
            target.unlink(missing_ok=True)
    case = prepare_label_map(path, labels_json, spacing)
    from medseg.train.cachefile import check_sources_unchanged

    check_sources_unchanged({"label": path, "labels_json": labels_json},
                            {"label": sha256, "labels_json": labels_json_sha256})  # fmt: skip
    case.save(target)
    return case
