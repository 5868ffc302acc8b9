"""Independence of a test set from a model's training data: checked against every training manifest the card names.

A test case conflicts with training when any of its files has the digest of a training file, when its voxels equal
those of a training CT or label (the same scan re-saved in another file, format, data type or axis order), when
its label's organ mask, as it is or mirrored along any axes with the affine kept, equals a training label's (a
relabelled or mirrored copy: organ value 1 stored as 2, arrays flipped), when its
DICOM Study/Series Instance UID appears in a training DICOM series, or when its patient pseudonym equals a training
case's. Voxel contents are compared with the training cases that hold a CT (label-map-only entries, rendered as
synthetic CT, are compared by file digest).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.errors

from medseg.audit.digest import file_sha256
from medseg.errors import InvalidInputError
from medseg.io import read_image
from medseg.models.card import ModelCard
from medseg.validation.sets import REPO, TestSet, digest_path


@dataclass(frozen=True)
class Identity:
    """What identifies one case: file digests, DICOM UIDs and patient pseudonyms (empty values never count)."""

    digests: frozenset[str] = frozenset()
    uids: frozenset[str] = frozenset()
    patients: frozenset[str] = frozenset()
    contents: frozenset[str] = frozenset()


@dataclass
class IndependenceResult:
    """Which manifests were read, how many training cases and test cases were compared, and every conflict."""

    manifests: list[dict[str, Any]] = field(default_factory=list)
    training_cases: int = 0
    test_cases: int = 0
    conflicts: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # test cases that are one scan (re-saved, re-typed...)
    data_root: str = ""
    uncompared_training: list[str] = field(default_factory=list)  # training CTs missing or not the manifest's

    def to_json(self) -> dict[str, Any]:
        """As a dict for the report: `independent` only when nothing conflicts and every training CT was compared
        (a training CT absent from the data root could be a test scan re-saved: unproven, not independent)."""
        proven = not self.conflicts and not self.duplicates and not self.uncompared_training
        return asdict(self) | {"independent": proven, "uncompared_training_cts": len(self.uncompared_training)}


def normalise_patient(text: str) -> str:
    """Patient pseudonyms compare case- and punctuation-blind ('CHAOS^CT_SET_3' == 'chaos ct set3')."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def dicom_identity(folder: Path) -> tuple[set[str], set[str]]:
    """(Study and Series Instance UIDs, PatientID/PatientName values) found in a DICOM folder's headers."""
    uids: set[str] = set()
    patients: set[str] = set()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):  # a non-DICOM file carries no identity
            continue
        uids |= {str(ds.get(k, "")).strip() for k in ("StudyInstanceUID", "SeriesInstanceUID")}
        patients |= {str(ds.get(k, "")).strip() for k in ("PatientID", "PatientName")}
    return uids - {""}, patients - {""}


def _ras_values(path: Path) -> np.ndarray:
    """The voxel values (rounded to integers) in RAS axis order: the same for one scan re-saved as .nii or .nii.gz,
    as int16 or float, flipped or transposed along with its affine, or read from its DICOM series."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    volume = read_image(path)
    ornt = ornt_transform(io_orientation(volume.geometry.affine_ras), axcodes2ornt("RAS"))
    return np.rint(apply_orientation(volume.array, ornt)).astype(np.int32)


def _digest(values: np.ndarray) -> str:
    values = np.ascontiguousarray(values)
    return hashlib.sha256(repr(values.shape).encode() + values.tobytes()).hexdigest()


def _mask_digest(mask: np.ndarray) -> str:
    """SHA-256 of a binary mask's shape and bits (packed: 8 voxels a byte, so its mirror images cost little)."""
    return hashlib.sha256(b"mask" + repr(mask.shape).encode() + np.packbits(mask).tobytes()).hexdigest()


def content_digest(path: Path) -> str:
    """SHA-256 of the grid shape and the voxel values of `_ras_values`."""
    return _digest(_ras_values(path))


def _mirrored(values: np.ndarray) -> Iterator[np.ndarray]:
    """`values` and its seven mirror images (flipped along each non-empty set of axes): a copy whose array was
    flipped while its affine was kept is the same scan, mirrored."""
    for flips in range(8):
        yield np.flip(values, [axis for axis in range(3) if flips >> axis & 1]) if flips else values


def _training_contents(image: Path, label: Path | None, organ_values: tuple[int, ...]) -> frozenset[str]:
    """Content digests of a training CT, its label and the label's binary masks `== value` for each organ value
    present (a label map relabelled, organ value 1 stored as 2, is the same annotation); a missing file is counted
    by `_uncompared`."""
    found = {content_digest(image)} if image.exists() else set()
    if label is not None and label.exists():
        labels = _ras_values(label)
        found.add(_digest(labels))
        masks = (labels == v for v in organ_values)
        found |= {_mask_digest(m) for m in masks if m.any()}
    return frozenset(found)


def _test_contents(image: Path, label: Path, label_value: int) -> frozenset[str]:
    """Content digests of a test CT, its label, and its label's `== label_value` mask also mirrored along every
    axis set (`_mirrored`: 8 digests of a packed mask; mirroring the CT too cost 3.5 s a case, and a mirrored copy
    of a training case mirrors its label with it)."""
    found = {content_digest(image)} if image.exists() else set()
    if label.exists():
        labels = _ras_values(label)
        mask = labels == label_value
        found.add(_digest(labels))
        if mask.any():
            found |= {_mask_digest(m) for m in _mirrored(mask)}
    return frozenset(found)


def _uncompared(entry: dict[str, Any], root: Path) -> str | None:
    """Why the voxels of a training case holding a CT were not compared with the test scans, or None: a file (image
    or label) absent from the data root ('missing'), or one whose SHA-256 is not the manifest's ('differs from the
    manifest'): the files compared must be the ones the model was trained on, or the test scan may be one of those,
    re-saved. Costs one SHA-256 of each training CT file per validation (a few seconds for the shipped manifests;
    reading the same files for their voxel content costs more)."""
    if not entry.get("image"):
        return None
    recorded = entry.get("sha256", {})
    for role in ("image", "label"):
        rel = entry.get(role)
        if not rel:
            continue
        if not (root / rel).exists():
            return f"{role} missing"
        if recorded.get(role) and digest_path(root / rel) != recorded[role]:
            return f"{role} differs from the manifest's SHA-256"
    return None


def _manifest_paths(training: Any) -> Iterator[tuple[str, str | None]]:
    """(manifest path, recorded SHA-256 or None) for every manifest named anywhere in the card's training record."""
    if isinstance(training, dict):
        for key, value in training.items():
            if key == "manifest" and isinstance(value, str):
                yield value, None
            elif key == "manifest" and isinstance(value, dict) and "file" in value:
                yield value["file"], value.get("sha256")
            else:
                yield from _manifest_paths(value)
    elif isinstance(training, list):
        for item in training:
            yield from _manifest_paths(item)


def training_manifests(card: ModelCard, repo: Path = REPO) -> list[tuple[Path, str | None]]:
    """Each training manifest of the model once, with the digest the card recorded for it (if any)."""
    found: dict[str, str | None] = {}
    for rel, sha in _manifest_paths(card.training):
        found[rel] = sha or found.get(rel)
    if not found:
        raise InvalidInputError(f"model card of {card.name} names no training manifest",
                                hint="Independence cannot be checked; add the manifest to the card.")  # fmt: skip
    return [(repo / rel, sha) for rel, sha in sorted(found.items())]


def _training_identity(entry: dict[str, Any], root: Path) -> Identity:
    digests = set(entry.get("sha256", {}).values()) - {entry.get("sha256", {}).get("labels_json")}
    patients = {entry["case_id"], entry.get("patient") or ""}
    uids: set[str] = set()
    image = entry.get("image")
    if image and (root / image).is_dir():
        uids, names = dicom_identity(root / image)
        patients |= names
    label = root / entry["label"] if entry.get("label") else None
    organ_values = tuple(sorted({v for k, v in entry.items() if k.endswith("_value") and isinstance(v, int)}))
    contents = _training_contents(root / image, label, organ_values) if image else frozenset()
    return Identity(
        frozenset(digests - {None}), frozenset(uids), frozenset(normalise_patient(p) for p in patients if p), contents
    )


def _test_identity(case: Any, root: Path) -> Identity:
    digests = {digest_path(root / rel) for rel in case.paths().values()}
    acq = case.acquisition
    uids = {u for u in (acq.study_instance_uid, acq.series_instance_uid) if u}
    patients = {case.patient}
    for rel in case.paths().values():
        if (root / rel).is_dir():
            more_uids, names = dicom_identity(root / rel)
            uids |= more_uids
            patients |= names
    contents = _test_contents(root / case.image, root / case.label, case.label_value)
    return Identity(
        frozenset(digests), frozenset(uids), frozenset(normalise_patient(p) for p in patients if p), contents
    )


def check_independence(ts: TestSet, card: ModelCard, root: Path, repo: Path = REPO) -> IndependenceResult:
    """Compare every test case with every case of every training manifest of the model; conflicts listed, not raised."""
    result = IndependenceResult(test_cases=len(ts.cases), data_root=str(root))
    training: list[tuple[str, str, Identity]] = []
    for path, recorded in training_manifests(card, repo):
        if not path.is_file():
            raise InvalidInputError("training manifest named in the model card is missing", path=path)
        actual = file_sha256(path)
        if recorded and actual != recorded:
            raise InvalidInputError(
                f"training manifest SHA-256 {actual[:12]}... differs from the model card's",
                path=path,
                hint="Independence cannot be checked against an altered manifest.",
            )
        entries = json.loads(path.read_text())["entries"]
        result.manifests.append({"file": path.relative_to(repo).as_posix(), "sha256": actual, "entries": len(entries)})
        training += [(path.stem, e["case_id"], _training_identity(e, root)) for e in entries]
        unverified = ((e["case_id"], _uncompared(e, root)) for e in entries)
        result.uncompared_training += [f"{path.stem}:{case} ({why})" for case, why in unverified if why]
    result.training_cases = len(training)
    seen: dict[str, str] = {}
    for case in ts.cases:
        mine = _test_identity(case, root)
        for digest in sorted(mine.contents):
            if seen.setdefault(digest, case.case_id) != case.case_id:
                result.duplicates.append(f"{case.case_id} is the same scan as {seen[digest]} (voxel content)")
        for manifest, case_id, theirs in training:
            for what, shared in (("file digest", mine.digests & theirs.digests), ("DICOM UID", mine.uids & theirs.uids),
                                 ("patient", mine.patients & theirs.patients),
                                 ("voxel content", mine.contents & theirs.contents)):  # fmt: skip
                if shared:
                    example = sorted(shared)[0][:24]
                    result.conflicts.append(
                        f"{case.case_id}: same {what} as training case {case_id} in {manifest} ({example})"
                    )
    return result


def require_independence(result: IndependenceResult, set_name: str, allow_unverified: bool = False) -> None:
    """InvalidInputError (exit 3) naming the first conflict when the set is not independent of training, or lists
    one scan twice (the cases would count as independent evidence), or when training CTs were missing from the data
    root so their voxel contents were not compared, unless `allow_unverified` (the record then says so and does not
    support release)."""
    if result.duplicates:
        raise InvalidInputError(
            f"test set {set_name} lists one scan twice: {result.duplicates[0]}",
            hint="Keep one of them; a test set lists each scan once.",
        )
    if result.conflicts:
        raise InvalidInputError(
            f"test set {set_name} is not independent of the model's training data: {result.conflicts[0]}"
            + (f" (and {len(result.conflicts) - 1} more)" if len(result.conflicts) > 1 else ""),
            hint="Remove the case from the test set; a test case seen in training proves nothing.",
        )
    if result.uncompared_training and not allow_unverified:
        n = len(result.uncompared_training)
        raise InvalidInputError(
            f"independence of test set {set_name} is unproven: {n} training CT(s) of the model "
            f"(first {result.uncompared_training[0]}) are not under the data root {result.data_root} as their "
            "manifest digests them, so their voxel contents were not compared with the test scans",
            hint="Point MEDSEG_DATA_ROOT at a root holding the training data the manifests name, or pass "
            "--allow-unverified-independence (the record then does not support release).",
        )
