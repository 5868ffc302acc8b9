"""Quality control of the input and of the result: each finding is a flag with a code and a readable reason.

Input-refusal flags (`refusal_flags` in `qc_rules.yaml`: the input is not what the model is for) stop the case
(exit code 5) unless the user passes --force; every other flag is a warning that only --strict turns into a
rejection. Thresholds live in `qc_rules.yaml`. Missing slices, gantry tilt, mixed orientations and implausible
voxel values or grids are refused earlier, by `medseg.io` (exit 3).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.io import Volume
from medseg.models.card import ModelCard
from medseg.yamltext import load_yaml

RULES_FILE = Path(__file__).with_name("qc_rules.yaml")


@dataclass(frozen=True)
class QCFlag:
    """One quality finding: a stable code (for scripts), the stage that raised it, and the reason in words."""

    code: str
    stage: str
    reason: str
    organ: str | None = None  # the organ a result flag is about (None for input flags)
    secondary: bool = False  # about an organ requested after the first (--organ liver,spleen): never refuses

    @property
    def refuses(self) -> bool:
        """True for a refusal flag (the input is not what the model is for: an input flag, or `organ_not_found`
        about the main organ requested): the case stops unless --force."""
        return self.code in refusal_codes() and not self.secondary

    def to_json(self) -> dict[str, str | bool]:
        record = {k: v for k, v in asdict(self).items() if v is not None and k != "secondary"}
        return record | {"refuses": self.refuses}

    @property
    def label(self) -> str:
        """The code with its organ ("spleen: volume_implausible"), for captions naming flags of several organs."""
        return f"{self.organ}: {self.code}" if self.organ else self.code


_LOADED_SHA256: dict[str, str] = {}  # the digest of the rules text `rules()` parsed, set together with it


@cache
def rules() -> dict[str, Any]:
    """The QC rules, read once per process from RULES_FILE (its SHA-256 kept for `rules_sha256`)."""
    data = RULES_FILE.read_bytes()
    _LOADED_SHA256["rules"] = hashlib.sha256(data).hexdigest()
    return load_yaml(data.decode("utf-8"))


def rules_sha256() -> str:
    """SHA-256 of the QC rules file as applied (recorded in summary.json and the audit record: an edited rules
    file is traceable)."""
    rules()
    return _LOADED_SHA256["rules"]


def confidence_limit(card: ModelCard | None) -> tuple[float, str]:
    """The `low_confidence` limit applied and where it came from: the model card's calibrated limit when it has one
    ("card"; the uncertain fraction depends on the network), else the rules file's ("rules")."""
    if card is not None and card.confidence is not None:
        return float(card.confidence.max_uncertain_fraction), "card"
    return float(rules()["low_confidence"]["max_uncertain_fraction"]), "rules"


def refusal_codes() -> frozenset[str]:
    """Codes of the input-refusal flags (data: `refusal_flags` in qc_rules.yaml)."""
    return frozenset(rules()["refusal_flags"])


def _extent_mm(volume: Volume) -> np.ndarray:
    return np.asarray(volume.shape) * np.asarray(volume.spacing)


def _inplane_strides(volume: Volume, axial: int) -> tuple[slice, ...]:
    """Every slice, every n-th row and column (sampled about every `data_region_step_mm`): the region holding data
    is a disc or a rectangle, found as well from a thinned grid at a fraction of the cost."""
    step_mm = float(rules()["data_region_step_mm"])
    return tuple(
        slice(None) if a == axial else slice(None, None, max(1, int(step_mm // s)))
        for a, s in enumerate(volume.spacing)
    )


def data_extent_mm(volume: Volume, axial: int) -> list[float]:
    """In-plane extent (mm, per in-plane array axis) of the region holding data: voxels not below `padding_below_hu`
    in any slice. Scanners store the area outside the reconstruction circle as padding (-2000, -3024 HU); an array
    of 500 mm whose circle holds 190 mm of patient is a 190 mm field of view."""
    strides = _inplane_strides(volume, axial)
    holds = volume.array[strides] >= float(rules()["padding_below_hu"])
    projected = holds.any(axis=axial)
    extents = []
    inplane = [a for a in range(3) if a != axial]
    for i, a in enumerate(inplane):
        hit = np.flatnonzero(projected.any(axis=1 - i))
        step = strides[a].step or 1
        extents.append(0.0 if hit.size == 0 else float((hit[-1] - hit[0] + 1) * step * volume.spacing[a]))
    return extents


@dataclass(frozen=True)
class EdgeEvidence:
    """What the image shows where an organ meets the edge of the data (`edge_evidence`): `padding`, it comes within
    `fov_edge_margin_mm` of padding or of the data's circle; `cut_sides`, the in-plane sides (LPS names) within
    `INPLANE_EDGE_MARGIN_MM` of the array's edge where the voxels between the organ and the edge look like the organ
    (`_organ_like_gap`): there the organ goes on beyond the prediction to the cut."""

    padding: bool = False
    cut_sides: tuple[str, ...] = ()


def edge_evidence(volume: Volume, labels: np.ndarray, label: int, bbox: dict[str, list[int]] | None) -> EdgeEvidence:
    """Whether the organ `label` comes within `fov_edge_margin_mm` of padding (values below `padding_below_hu`: no
    data, outside the reconstructed field of view), i.e. the scan's circle cuts it although the array's edge does
    not, with the in-plane sides where the image shows it cut by the array's edge. Only the organ's box grown by the
    margin is read; with no padding in it (the usual case) that is all."""
    if bbox is None:
        return EdgeEvidence(False)
    padding = _near_padding(volume, labels, label, bbox) or _near_constant_fill_circle(volume, labels, label, bbox)
    return EdgeEvidence(padding, inplane_cut_sides(volume, labels, label, bbox))


def _near_padding(volume: Volume, labels: np.ndarray, label: int, bbox: dict[str, list[int]]) -> bool:
    r = rules()
    margin = [int(np.ceil(float(r["fov_edge_margin_mm"]) / s)) for s in volume.spacing]
    box = tuple(
        slice(max(b - m, 0), min(e + m, n))
        for b, e, m, n in zip(bbox["start"], bbox["stop"], margin, volume.shape, strict=True)
    )
    padding = volume.array[box] < float(r["padding_below_hu"])
    if not padding.any():
        return False
    near = ndimage.maximum_filter(padding.view(np.uint8), size=[2 * m + 1 for m in margin]) > 0
    return bool((near & (labels[box] == label)).any())


def _fill_value(volume: Volume, axial: int) -> float | None:
    """The value every slice holds in its four in-plane corners when it is one value at or below -1000 HU (scanners
    and exports that store the outside of the reconstruction circle as air, -1024, not as padding), else None."""
    array = np.moveaxis(volume.array, axial, -1)
    corners = np.stack([array[0, 0], array[0, -1], array[-1, 0], array[-1, -1]])
    value = float(corners.flat[0])
    return value if value <= -1000 and bool((corners == value).all()) else None


def _near_constant_fill_circle(volume: Volume, labels: np.ndarray, label: int, bbox: dict[str, list[int]]) -> bool:
    """Whether the organ reaches within `fov_edge_margin_mm` of the circle holding the data when the outside of
    the reconstruction circle is stored as one constant air value (`_fill_value`): the data are the in-plane pixels
    that differ from that value in some slice, their circle is centred on their bounding box with the radius of the
    farthest of them. Without such a circle (air clipped to -1024 around the body) the farthest data are the body's
    surface or the table, which an organ inside the body never reaches."""
    axial = int(np.argmax(np.abs(volume.geometry.direction_matrix[2, :])))
    value = _fill_value(volume, axial)
    if value is None:
        return False
    inplane = [a for a in range(3) if a != axial]
    data = (volume.array != value).any(axis=axial)
    organ = (labels[tuple(slice(b, e) for b, e in zip(bbox["start"], bbox["stop"], strict=True))] == label).any(
        axis=axial
    )
    spacing = np.array([volume.spacing[a] for a in inplane])
    points = np.argwhere(data)
    if points.size == 0:
        return False
    centre = (points.min(axis=0) + points.max(axis=0)) / 2.0
    radius = float(np.sqrt((((points - centre) * spacing) ** 2).sum(axis=1)).max())
    start = np.array([bbox["start"][a] for a in inplane])
    reach = float(np.sqrt((((np.argwhere(organ) + start - centre) * spacing) ** 2).sum(axis=1)).max())
    return reach >= radius - float(rules()["fov_edge_margin_mm"])


def inplane_cut_sides(volume: Volume, labels: np.ndarray, label: int, bbox: dict[str, list[int]]) -> tuple[str, ...]:
    """The in-plane sides (LPS names) where the organ's box ends within `INPLANE_EDGE_MARGIN_MM` of the array's edge
    without touching it and `_organ_like_gap` holds: image evidence of a cut, not distance alone (a whole liver in a
    320 mm field of view lies 9-10 mm from the edge with the body wall between)."""
    d = volume.geometry.direction_matrix
    axial = int(np.argmax(np.abs(d[2, :])))
    box = tuple(slice(b, e) for b, e in zip(bbox["start"], bbox["stop"], strict=True))
    inside = volume.array[box][labels[box] == label].astype(np.float64)
    if inside.size == 0:
        return ()
    mean, sd = float(inside.mean()), float(inside.std())
    sides = []
    for a in (a for a in range(3) if a != axial):
        for low in (True, False):
            gap = bbox["start"][a] if low else volume.shape[a] - bbox["stop"][a]
            if 0 < gap * volume.spacing[a] <= INPLANE_EDGE_MARGIN_MM and _organ_like_gap(
                volume, labels, label, bbox, a, low, (mean, sd)
            ):
                sides.append(_side(-d[:, a]) if low else _side(d[:, a]))
    return tuple(sides)


GAP_ORGAN_SD = 2.0  # a voxel within the organ's mean +- 2 SD (its own HU spread, vessels included) looks like it
GAP_ORGAN_FRACTION = 0.75  # most of the gap: a body wall of fat, skin and thin muscle never is; a cut organ is
GAP_REACH_MM = 5.0  # the organ's rows that come this close to its box boundary on that side are the ones examined


def _organ_like_gap(
    volume: Volume,
    labels: np.ndarray,
    label: int,
    bbox: dict[str, list[int]],
    axis: int,
    low: bool,
    organ_hu: tuple[float, float],
) -> bool:
    """Whether the voxels between the organ and the array's edge on one side, in the organ's rows that come within
    `GAP_REACH_MM` of its box boundary there, are mostly (`GAP_ORGAN_FRACTION`) within `GAP_ORGAN_SD` SD of the
    organ's mean HU: a cut liver has liver up to the edge, a whole one the abdominal wall (fat, muscle, skin)."""
    reach = int(np.ceil(GAP_REACH_MM / volume.spacing[axis]))
    span = [slice(b, e) for b, e in zip(bbox["start"], bbox["stop"], strict=True)]
    span[axis] = (slice(0, bbox["start"][axis] + reach) if low
                  else slice(bbox["stop"][axis] - reach, volume.shape[axis]))  # fmt: skip
    region = tuple(span)
    mask = np.moveaxis(labels[region] == label, axis, 0)
    values = np.moveaxis(volume.array[region], axis, 0)
    if not low:
        mask, values = mask[::-1], values[::-1]
    gap = bbox["start"][axis] if low else volume.shape[axis] - bbox["stop"][axis]
    first = np.argmax(mask, axis=0)
    lines = mask.any(axis=0) & (first < gap + reach)
    between = (np.arange(mask.shape[0]).reshape(-1, 1, 1) < first[None]) & lines[None]
    if not between.any():
        return False
    mean, sd = organ_hu
    like = np.abs(values[between].astype(np.float64) - mean) <= GAP_ORGAN_SD * max(sd, 1.0)
    return bool(like.mean() >= GAP_ORGAN_FRACTION)


def check_input(volume: Volume, card: ModelCard) -> list[QCFlag]:
    """Flags about the input: modality, whether values are raw HU, field of view and slice geometry."""
    r = rules()
    flags = []
    modality = volume.meta.modality
    if modality and modality != card.modality:
        flags.append(QCFlag("modality", "input", f"modality is {modality}; the model is for {card.modality}"))
    if card.modality == "CT":
        lo, hi = float(volume.array.min()), float(volume.array.max())
        if lo >= 0 and hi <= r["max_display_value"]:
            flags.append(
                QCFlag("not_hu", "input", f"values lie in [{lo:g}, {hi:g}]: an 8-bit display image, not raw HU")
            )
        elif lo > r["min_air_hu"]:
            flags.append(
                QCFlag("not_hu", "input", f"lowest value is {lo:g}, no air near -1000 HU: windowed or normalised data")
            )
    body_part = str(volume.meta.extra.get("body_part_examined", "")).upper()
    if body_part in r["body_parts_without_abdomen"]:
        flags.append(
            QCFlag("body_part", "input", f"BodyPartExamined is {body_part}: the scan does not show the abdomen")
        )
    if min(volume.shape) < r["min_slices"]:
        reason = f"{min(volume.shape)} slice(s) along one axis (shape {tuple(volume.shape)}): an image, not a volume"
        flags.append(QCFlag("not_a_volume", "input", reason))
    extent = _extent_mm(volume)
    axial = int(np.argmax(np.abs(volume.geometry.direction_matrix[2, :])))
    inplane = (
        data_extent_mm(volume, axial) if card.modality == "CT" else [e for a, e in enumerate(extent) if a != axial]
    )
    if extent[axial] < r["min_z_extent_mm"]:
        flags.append(
            QCFlag("fov_short", "input", f"scan covers {extent[axial]:.0f} mm head-foot (< {r['min_z_extent_mm']} mm)")
        )
    if min(inplane) < r["min_inplane_extent_mm"]:
        flags.append(
            QCFlag(
                "fov_small",
                "input",
                f"in-plane field of view {min(inplane):.0f} mm holding data (< {r['min_inplane_extent_mm']} mm)",
            )
        )
    coarsest = float(max(volume.spacing))  # the slice axis, whichever array axis holds it (NIfTI has no rule)
    if coarsest > r["max_slice_spacing_mm"]:
        reason = f"slice spacing {coarsest:.2g} mm > {r['max_slice_spacing_mm']} mm"
        flags.append(QCFlag("slice_spacing", "input", reason))
    step = float(volume.spacing[2])  # DICOM: the stacking axis, along which SliceThickness is measured
    thickness = volume.meta.extra.get("slice_thickness")
    if isinstance(thickness, (int, float)) and thickness > r["max_slice_thickness_mm"]:
        flags.append(
            QCFlag("thick_slices", "input", f"slice thickness {thickness:.2g} mm > {r['max_slice_thickness_mm']} mm")
        )
    if isinstance(thickness, (int, float)) and 0 < thickness < r["min_thickness_to_spacing"] * step:
        reason = f"slices {thickness:.2g} mm thick every {step:.2g} mm: {step - thickness:.2g} mm gaps between slices"
        flags.append(QCFlag("slice_gaps", "input", reason))
    return flags


def volume_range(card: ModelCard, organ: str) -> tuple[float, float] | None:
    """Plausible volume range in ml: the model card's for its main organ, else the rules' default for the organ, else
    None (a multi-organ card's range is its main organ's: a 123 ml spleen is not an implausible liver)."""
    if card.volume_range_ml is not None and organ == card.organ:
        return tuple(card.volume_range_ml)
    default = rules()["volume_ml"].get(organ)
    return tuple(default) if default else None


def _not_found(
    organ: str,
    stats: dict[str, Any],
    hu: bool = True,
    shape: tuple[int, ...] | None = None,
    direction: np.ndarray | None = None,
) -> str | None:
    """The reason the organ counts as not found (none, or less than `organ_not_found_below_ml`), else None; for
    the anchor organ (the liver) also `_not_the_anchor`."""
    if stats["voxel_count"] == 0:
        return f"no {organ} found"
    below = float((rules().get("organ_not_found_below_ml") or {}).get(organ, 0.0))
    if stats["volume_ml"] < below:
        return f"only {stats['volume_ml']:.1f} ml of {organ} found (< {below:g} ml): the scan does not show the {organ}"
    if organ == rules().get("anchor_organ"):
        return _not_the_anchor(organ, stats, hu, shape, direction)
    return None


def _not_the_anchor(
    organ: str, stats: dict[str, Any], hu: bool, shape: tuple[int, ...] | None, direction: np.ndarray | None
) -> str | None:
    """Why a found anchor organ (the liver) smaller than `anchor_partial_below_ml` is still not it: on CT its mean HU
    is outside `organ_hu_range` (a 31 ml "liver" at -112 HU is fat), or it stays further than
    `anchor_superior_margin_mm` from the scan's superior end (a pelvis scan's spurious "liver"; a scan whose upper
    edge cuts into the liver's lowest part holds a small liver at its superior end, and is served). A larger one
    with an odd mean HU is a model failure on a scan that shows the abdomen: `organ_intensity`, a warning."""
    lo, hi = rules()["organ_hu_range"]
    small = float((rules().get("anchor_partial_below_ml") or {}).get(organ, 0.0))
    if stats["volume_ml"] >= small:
        return None
    if hu and stats.get("mean_hu") is not None and not lo <= stats["mean_hu"] <= hi:
        return (f"the {stats['volume_ml']:.1f} ml found as {organ} has a mean of {stats['mean_hu']:.0f} HU, outside "
                f"{lo}-{hi} HU: not {organ} tissue, the scan does not show the {organ}")  # fmt: skip
    if shape is None or stats.get("bbox_index") is None:
        return None
    if stats.get("spacing") is None:
        return None
    gap = _superior_gap_mm(stats["bbox_index"], shape, np.eye(3) if direction is None else np.asarray(direction),
                           stats["spacing"])  # fmt: skip
    if gap <= float(rules()["anchor_superior_margin_mm"]):
        return None
    return (f"only {stats['volume_ml']:.1f} ml of {organ} found (< {small:g} ml), {gap:.0f} mm below the scan's "
            f"superior end: no {organ} cut by the scan's upper edge is that small, the scan does not show the "
            f"{organ}")  # fmt: skip


def _superior_gap_mm(
    box: dict[str, list[int]], shape: tuple[int, ...], d: np.ndarray, spacing: tuple[float, ...]
) -> float:
    """How far (mm) the organ's box stays from the array's superior end."""
    axial = int(np.argmax(np.abs(d[2, :])))
    step = float(spacing[axial])
    voxels = shape[axial] - box["stop"][axial] if d[2, axial] > 0 else box["start"][axial]
    return voxels * step


def anchor_organ(card: ModelCard, organs: tuple[str, ...]) -> int | None:
    """The label value of the anchor organ (`anchor_organ`, the liver) when `card` predicts it and it is not the
    main requested organ (whose own `organ_not_found` check covers it), else None."""
    anchor = rules().get("anchor_organ")
    if not anchor or (organs and organs[0] == anchor):
        return None
    return next((value for value, name in card.foreground_labels.items() if name == anchor), None)


def check_anchor(
    anchor: float | dict[str, Any],
    organ: str,
    shape: tuple[int, ...] | None = None,
    direction: np.ndarray | None = None,
    hu: bool = True,
) -> list[QCFlag]:
    """`organ_not_found` (a refusal flag, for the main organ) when the anchor organ counts as not found: less than
    `organ_not_found_below_ml` of it (`anchor` its volume in ml or its `organ_stats`), or, given its stats and
    the array's `shape`, `_not_the_anchor` (fat, or small and away from the scan's superior end). The scan then does
    not show the upper abdomen, so whatever `organ` the model reports there is not it (a pelvis-only CT gave a 199
    ml "spleen" in the gluteal muscle)."""
    name = str(rules()["anchor_organ"])
    stats = anchor if isinstance(anchor, dict) else {"voxel_count": 1, "volume_ml": float(anchor)}
    if stats["voxel_count"] == 0:
        stats = stats | {"volume_ml": 0.0, "voxel_count": 1}
    why = _not_found(name, stats, hu, shape, direction)
    if why is None:
        return []
    finding = why.split(": the scan does not show")[0]
    reason = f"{finding}: the scan does not show the upper abdomen ({name}), so no {organ} is served"
    return [QCFlag("organ_not_found", "result", reason, organ)]


SIDES = {
    (0, 1): "left",
    (0, -1): "right",
    (1, 1): "posterior",
    (1, -1): "anterior",
    (2, 1): "superior",
    (2, -1): "inferior",
}


def _side(direction: np.ndarray) -> str:
    """Anatomical name (LPS) of the nearest axis direction."""
    axis = int(np.argmax(np.abs(direction)))
    return SIDES[(axis, 1 if direction[axis] > 0 else -1)]


# A liver cut by the in-plane edge of the array is predicted a few voxels to 13 mm short of the cut (the network loses
# the body's outline there: CHAOS cropped to 300 and 200 columns), so "touches the edge" never fires; the nearest
# in-plane edge of the real CTs' livers is 37 mm away. The slice axis keeps the exact test: a liver ends naturally
# within 12 mm of the first or last slice of real scans (CHAOS, radcttace_1211) without being cut there.
INPLANE_EDGE_MARGIN_MM = 15.0
# Within this much of an in-plane edge the organ is flagged without image evidence: a body wall is thicker than 5 mm
# (skin alone is 2-3 mm), and the cut CHAOS liver at 300 columns was predicted 3.7 mm short of the cut.
INPLANE_CUT_MARGIN_MM = 5.0


def _edge_sides(
    box: dict[str, list[int]],
    shape: tuple[int, ...],
    d: np.ndarray,
    spacing: tuple[float, ...] | None,
    margin_mm: float = INPLANE_EDGE_MARGIN_MM,
) -> tuple[list[str], list[str]]:
    """The sides (LPS names) where the organ's box touches the array's edge, and the in-plane sides it comes within
    `margin_mm` of without touching (none when `spacing` is None)."""
    touching = [_side(-d[:, a]) for a in range(3) if box["start"][a] == 0]
    touching += [_side(d[:, a]) for a in range(3) if box["stop"][a] == shape[a]]
    if spacing is None:
        return touching, []
    axial = int(np.argmax(np.abs(d[2, :])))
    near = []
    for a in (a for a in range(3) if a != axial):
        if 0 < box["start"][a] * spacing[a] <= margin_mm:
            near.append(_side(-d[:, a]))
        if 0 < (shape[a] - box["stop"][a]) * spacing[a] <= margin_mm:
            near.append(_side(d[:, a]))
    return touching, [s for s in near if s not in touching]


def check_result(
    organ: str,
    stats: dict[str, Any],
    labels_shape: tuple[int, ...],
    card: ModelCard,
    direction: np.ndarray | None = None,
    edge: EdgeEvidence = EdgeEvidence(),
    main: bool = True,
    spacing: tuple[float, ...] | None = None,
) -> list[QCFlag]:
    """Flags about one segmented organ: not found, implausible volume or intensity, cut off by the scan's edge (with
    `spacing`, also within `INPLANE_CUT_MARGIN_MM` of an in-plane edge, or within `INPLANE_EDGE_MARGIN_MM` of one of
    the `cut_sides` of `edge`, from `edge_evidence`) or by the edge of the reconstructed field of view
    (`edge.padding`).

    `organ_not_found` (a refusal flag) when nothing or only a negligible volume (`organ_not_found_below_ml`) was
    found: the scan does not show the organ (a pelvis-only CT reads as a few ml of spurious "liver"). It refuses
    for the `main` organ (the first requested) only: a second organ out of view (a half field of view without the
    spleen) is a finding, not a wrong input."""
    found = _not_found(organ, stats | {"spacing": spacing}, card.modality == "CT", labels_shape, direction)
    if found is not None:
        return [QCFlag("organ_not_found", "result", found, organ, secondary=not main)]
    flags = []
    span = volume_range(card, organ)
    ml = stats["volume_ml"]
    if span and not span[0] <= ml <= span[1]:
        flags.append(
            QCFlag("volume_implausible", "result", f"{organ} volume {ml:.0f} ml outside {span[0]:g}-{span[1]:g} ml")
        )
    lo, hi = rules()["organ_hu_range"]
    if card.modality == "CT" and not lo <= stats["mean_hu"] <= hi:
        flags.append(
            QCFlag("organ_intensity", "result", f"mean {stats['mean_hu']:.0f} HU inside {organ} outside {lo}-{hi}")
        )
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    sides, near = _edge_sides(stats["bbox_index"], labels_shape, d, spacing)
    close = _edge_sides(stats["bbox_index"], labels_shape, d, spacing, INPLANE_CUT_MARGIN_MM)[1]
    near = [s for s in near if s in close or s in edge.cut_sides]
    edges = [f"the {' and '.join(sorted(set(sides)))} edge of the scan"] if sides else []
    edges += (
        ["the edge of the reconstructed field of view (padding or a constant fill outside it)"] if edge.padding else []
    )
    phrases = [f"touches {' and '.join(edges)}"] if edges else []
    phrases += ([f"comes within {INPLANE_EDGE_MARGIN_MM:g} mm of the {' and '.join(sorted(set(near)))} edge of the "
                 "scan with tissue like it up to that edge (an organ cut there is predicted short of the cut)"]
                if near else [])  # fmt: skip
    if phrases:
        reason = f"{organ} {' and '.join(phrases)}: its volume may be underestimated"
        flags.append(QCFlag("organ_truncated", "result", reason))
    return [replace(f, organ=organ) for f in flags]


def check_confidence(organ: str, confidence: dict[str, float], card: ModelCard | None = None) -> list[QCFlag]:
    """`low_confidence` when the organ's uncertain fraction (medseg.postprocess.confidence) exceeds the model's
    calibrated limit (`card.confidence`) or, for a model without one, the rules file's (`confidence_limit`)."""
    limit, _ = confidence_limit(card)
    value = confidence["uncertain_fraction"]
    if value <= limit:
        return []
    reason = (f"{organ}: uncertain volume (probability 0.2-0.8) is {value:.1%} of the organ's volume "
              f"(limit {limit:.1%}): the result may be wrong, check it")  # fmt: skip
    return [QCFlag("low_confidence", "result", reason, organ)]
