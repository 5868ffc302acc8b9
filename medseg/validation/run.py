"""One validation: verify the lock and independence, segment every case with the infer pipeline, score, judge.

Outputs in OUT: cases/<case>/ (the pipeline's label map, summary.json, preview.png), per_case.csv and report.json
(written by medseg.validation.report). A case the pipeline fails on counts as a missed organ, never as absent.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.audit.digest import file_sha256
from medseg.digests import default_data_root
from medseg.errors import InvalidInputError, ProcessingError, UsageError
from medseg.infer.cases import Case, safe_name
from medseg.infer.pipeline import InferSettings, run_case_safe
from medseg.io import Geometry, Volume, read_image, read_nifti
from medseg.metrics import organ_metrics
from medseg.models.registry import InstalledModel, resolve_model
from medseg.validation.acceptance import ACCEPTANCE_DIR, acceptance_path, evaluate, load_acceptance
from medseg.validation.analysis import aggregates, subgroups
from medseg.validation.independence import check_independence, normalise_patient, require_independence
from medseg.validation.sets import SETS_DIR, SetCase, file_origin, set_paths, verify_lock

GRID_TOLERANCE_VOXELS = 0.1  # label and prediction corners may differ by a tenth of the smallest voxel (rounding)


@dataclass(frozen=True)
class ValidationRequest:
    """What to validate: model, locked set, acceptance criteria, where to write and how to run the model."""

    model: str | None
    set_name: str
    out_dir: Path
    acceptance: str = "liver_v1"
    backend: str = "auto"
    device: str = "cpu"
    sets_dir: Path = SETS_DIR
    data_root: Path | None = None
    allow_unverified_independence: bool = False


def _predict(case: SetCase, root: Path, model: InstalledModel, runner: Any, out: Path) -> dict[str, Any]:
    """Run the infer pipeline on one case; returns its status, QC flags, outputs and the predicted mask path."""
    image = root / case.image
    job = Case(safe_name(case.case_id), image, "nifti", lambda: read_image(image))
    settings = InferSettings(model.card.organ, out / "cases", preview=True, organs=(model.card.organ,))
    result = run_case_safe(job, model, runner, settings)
    labels = out / "cases" / job.name / f"{model.card.organ}.nii.gz"
    if result.status in ("ok", "flagged") and not labels.is_file():
        raise ProcessingError(
            f"{case.case_id}: the pipeline reported {result.status} but wrote no {labels.name}",
            path=labels.parent,
            hint="Report this as a defect; the validation cannot score it.",
        )
    return {
        "status": result.status,
        "message": result.message,
        "qc_flags": [f.code for f in result.flags],
        "prediction": labels if result.status in ("ok", "flagged") and labels.is_file() else None,
    }


def label_on_grid(ref: Volume, grid: Geometry, case_id: str, path: Path) -> np.ndarray:
    """The reference label's voxels on `grid` (the prediction's, which is the image's): a label stored with other
    axis order or flips is reoriented (nibabel's orientation transform, no resampling); any other difference in the
    physical frame (origin, direction, spacing, extent beyond a tenth of the smallest voxel) is refused, since
    comparing voxel by voxel would score anatomy against other anatomy."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    ornt = ornt_transform(io_orientation(ref.geometry.affine_ras), io_orientation(grid.affine_ras))
    array = np.ascontiguousarray(apply_orientation(ref.array, ornt))
    moved_affine = ref.geometry.affine_ras @ inv_ornt_aff(ornt, ref.shape)
    shape = tuple(int(n) for n in array.shape)
    deviation = Geometry.from_affine_ras(moved_affine, shape).max_deviation_mm(grid)  # type: ignore[arg-type]
    if deviation > GRID_TOLERANCE_VOXELS * min(grid.spacing):
        where = "differ in shape" if shape != grid.shape else f"lie up to {deviation:.2f} mm apart"
        raise InvalidInputError(
            f"{case_id}: the reference label is not on the image's grid (label {ref.shape} spacing "
            f"{_mm(ref.spacing)}, image {grid.shape} spacing {_mm(grid.spacing)}; the grids {where})",
            path=path,
            hint="Store the label on the image's voxel grid (axis order and flips may differ); it is not resampled.",
        )
    return array


def _mm(spacing: tuple[float, ...]) -> str:
    return "x".join(f"{s:.3g}" for s in spacing)


def score_case(case: SetCase, root: Path, prediction: Path | None, organ: str, label: int, tolerance: float) -> dict:
    """Metrics of one case on the prediction's grid (the image's), the reference label brought onto it by
    `label_on_grid`; a missing prediction scores as an empty mask (a miss) on the label's own grid."""
    ref = read_nifti(root / case.label)
    truth = ref.array == case.label_value
    pred = np.zeros_like(truth)
    spacing = ref.spacing
    if prediction is not None:
        vol = read_nifti(prediction)
        truth = label_on_grid(ref, vol.geometry, case.case_id, root / case.label) == case.label_value
        pred = vol.array == label
        spacing = vol.spacing
    return {organ: organ_metrics(truth, pred, tuple(float(s) for s in spacing), tolerance).to_json()}


def _score_cases(
    cases: list[SetCase], root: Path, model: InstalledModel, runner: Any, out: Path, tolerance: float,
    on_case: Callable[[str, dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Segment every case with the infer pipeline and score it against its reference label."""
    label = 1  # the organ's value in `<organ>.nii.gz` (infer.organs.renumber), whatever its class in the model
    rows = []
    for case in cases:
        pred = _predict(case, root, model, runner, out)
        row = {
            "case_id": case.case_id,
            "patient": case.patient,
            "source": case.source,
            "label_type": case.label_type,
            "notes": case.notes,
            "acquisition": case.acquisition.model_dump(),
            "inference": {k: v for k, v in pred.items() if k != "prediction"},
            "metrics": score_case(case, root, pred["prediction"], model.card.organ, label, tolerance),
        }
        rows.append(row)
        if on_case is not None:
            on_case(case.case_id, row)
    return rows


def run_validation(
    req: ValidationRequest,
    on_case: Callable[[str, dict[str, Any]], None] | None = None,
    before_inference: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Everything report.json holds except the artifact digests; raises InvalidInputError on lock/independence.
    `before_inference` runs after every check on the inputs and before the first case is segmented (the caller
    opens its tracking store there, so a broken store fails in seconds, and a refused set creates none).

    The runtime is exported now into a temporary folder and parity-checked against eager torch in this run: release
    evidence never rests on a cached export, whose record only vouches for itself."""
    from medseg.infer.runtime import load_runner

    root = req.data_root or default_data_root()
    ts, lock = verify_lock(req.set_name, root, req.sets_dir)
    model = resolve_model(req.model, ts.organ)
    card = model.card
    acc_path = acceptance_path(req.acceptance)
    acc, acc_sha = load_acceptance(acc_path)
    if acc.organ != card.organ or ts.organ != card.organ:
        raise UsageError(f"model {card.name} ({card.organ}), set {ts.name} ({ts.organ}) and criteria "
                         f"{acc.name} ({acc.organ}) are not for one organ")  # fmt: skip
    independence = check_independence(ts, card, root)
    require_independence(independence, ts.name, req.allow_unverified_independence)
    weights_sha = model.verify()
    if before_inference is not None:
        before_inference()
    with tempfile.TemporaryDirectory(prefix="medseg-validate-export-") as fresh:
        runner = load_runner(model, req.backend, req.device, cache=Path(fresh))
        cases = _score_cases(ts.cases, root, model, runner, req.out_dir, acc.nsd_tolerance_mm[card.organ], on_case)
    boot = acc.bootstrap
    set_file, lock_file = set_paths(req.set_name, req.sets_dir)
    lock_sha = file_sha256(lock_file)
    aggs = aggregates(cases, card.organ, boot.seed, boot.resamples, boot.level)
    groups = subgroups(cases, card.organ, acc.subgroups, boot.seed, boot.resamples, boot.level)
    return {
        "schema": "medseg-validation-report/1",
        "model": _model_record(model, weights_sha, runner),
        "set": {"name": ts.name, "description": ts.description, "file": file_origin(set_file, SETS_DIR),
                "set_digest": lock["set_digest"],
                "set_file_sha256": lock["set_file_sha256"], "lock_file_sha256": lock_sha,
                "cases": len(ts.cases), "patients": len({normalise_patient(c.patient) for c in ts.cases})},
        "independence": independence.to_json(),
        "acceptance_file": file_origin(acc_path, ACCEPTANCE_DIR) | {"sha256": acc_sha, "version": acc.version},
        "nsd_tolerance_mm": acc.nsd_tolerance_mm,
        "bootstrap": boot.model_dump() | {"resampling_unit": "patient"},
        "cases": cases,
        "aggregates": aggs,
        "subgroups": groups,
        "acceptance": evaluate(acc, aggs, groups),
        "environment": environment(),
    }  # fmt: skip


def _model_record(model: InstalledModel, weights_sha: str, runner: Any) -> dict[str, Any]:
    card = model.card
    runtime = {str(k): str(v) for k, v in runner.info.items()} | {"backend": str(runner.backend)}
    return {"name": card.name, "version": card.version, "organ": card.organ, "weights_sha256": weights_sha,
            "card_sha256": file_sha256(model.folder / "model_card.yaml"), "runtime": runtime}  # fmt: skip


def environment() -> dict[str, Any]:
    """Software that produced the numbers: medseg, Python, platform and the versions of the numeric libraries."""
    from importlib.metadata import PackageNotFoundError, version

    libs = {}
    for name in ("numpy", "scipy", "torch", "monai", "openvino", "nibabel", "SimpleITK", "pydicom"):
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = None
    return {
        "medseg": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
    }
