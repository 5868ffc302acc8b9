"""Locked test sets: `validation/sets/NAME.yaml` (cases, digests, acquisition facts) and its `NAME.lock.json`.

The lock holds each file's SHA-256, the SHA-256 of the set file and the set digest (over the canonical JSON of
the locked cases); `medseg validate` refuses a set whose files, set file or lock no longer agree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medseg.audit.canonical import canonical_bytes
from medseg.audit.digest import file_sha256
from medseg.digests import default_data_root, digest_path
from medseg.errors import InvalidInputError, UsageError
from medseg.io.atomic import atomic_write_text
from medseg.yamltext import load_yaml

REPO = Path(__file__).resolve().parents[2]
SETS_DIR = REPO / "validation" / "sets"
ROLES = ("image", "label", "dicom")


def file_origin(path: Path, folder: Path) -> dict[str, str | bool]:
    """Where a set or criteria file came from: `in_project` True only when the file, with links and '..'
    resolved, lies in the project's `folder` (validation/sets/, validation/acceptance/); `path` is then its
    repo-relative path, else its absolute one. A file that only looks like the project's (a relative path typed
    in another folder, a set carrying a shipped set's name) is recorded as what it is."""
    resolved = Path(path).resolve()
    inside = resolved.is_relative_to(folder.resolve())
    shown = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else str(resolved)
    return {"path": shown, "in_project": inside}


class Acquisition(BaseModel):
    """Facts of the scan, from the headers or the source's documentation; None where unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manufacturer: str | None = None
    model: str | None = None
    phase: str | None = None
    slice_thickness_mm: float | None = None
    kernel: str | None = None
    kvp: float | None = None
    site: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None


class SetCase(BaseModel):
    """One test case: image and reference label (paths relative to the data root), their digests and facts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    case_id: str
    patient: str
    image: str
    label: str
    label_value: int = 1
    dicom: str | None = None
    sha256: dict[Literal["image", "label", "dicom"], str]
    source: str
    licence: str
    label_type: Literal["manual", "model"]
    acquisition: Acquisition = Acquisition()
    notes: str | None = None

    def paths(self) -> dict[str, str]:
        """Role -> relative path of every file of the case."""
        return {r: p for r in ROLES if (p := getattr(self, r))}

    @model_validator(mode="after")
    def _every_file_has_its_digest(self) -> SetCase:
        """A file without its SHA-256 in the set file would be bound only by the unsigned lock."""
        if set(self.sha256) != set(self.paths()):
            raise ValueError(f"case {self.case_id}: sha256 must list exactly {sorted(self.paths())}")
        return self


class TestSet(BaseModel):
    """A locked test set file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    organ: str
    cases: list[SetCase] = Field(min_length=1)

    @model_validator(mode="after")
    def _cases_are_distinct(self) -> TestSet:
        """One scan listed twice (under two ids or two patients) would count as two independent cases."""
        seen: dict[str, str] = {}
        for case in self.cases:
            for key in [f"id {case.case_id}", *(f"{role} SHA-256 {d}" for role, d in case.sha256.items())]:
                if key in seen:
                    raise ValueError(f"cases {seen[key]} and {case.case_id} share the {key.split(' ', 1)[0]} "
                                     f"({key[:40]}...): a test set lists each scan once")  # fmt: skip
                seen[key] = case.case_id
        return self


def set_paths(name: str, sets_dir: Path = SETS_DIR) -> tuple[Path, Path]:
    """(set file, lock file) of the set NAME; NAME may also be a path to a .yaml file."""
    candidate = Path(name)
    yaml_path = candidate if candidate.suffix in (".yaml", ".yml") else Path(sets_dir) / f"{name}.yaml"
    return yaml_path, yaml_path.with_name(yaml_path.name.rsplit(".", 1)[0] + ".lock.json")


def load_set(path: Path) -> TestSet:
    """Parse and validate a set file; InvalidInputError naming the first problem."""
    if not path.is_file():
        raise UsageError("no such test set file", path=path, hint="List them in validation/sets/.")
    try:
        return TestSet.model_validate(load_yaml(path.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()[0:3]
        raise InvalidInputError(f"invalid test set file: {' '.join(first)}", path=path) from exc


def _locked_cases(ts: TestSet, root: Path) -> list[dict[str, object]]:
    """Each case's id, patient and the digest of every file, recomputed from the data."""
    out = []
    for case in ts.cases:
        digests = {role: digest_path(root / rel) for role, rel in case.paths().items()}
        for role, expected in case.sha256.items():
            if digests.get(role) != expected:
                raise InvalidInputError(
                    f"{case.case_id} {role}: SHA-256 {str(digests.get(role))[:12]}... differs from the set file's "
                    f"{expected[:12]}...",
                    path=root / case.paths().get(role, "?"),
                    hint="The data changed; fix the data or write a new set version.",
                )
        out.append({"case_id": case.case_id, "patient": case.patient, "sha256": digests})
    return out


def set_digest(cases: list[dict[str, object]]) -> str:
    """SHA-256 of the canonical JSON of the locked cases."""
    return hashlib.sha256(canonical_bytes(cases)).hexdigest()  # type: ignore[arg-type]


def lock_set(name: str, root: Path | None = None, sets_dir: Path = SETS_DIR, overwrite: bool = False) -> dict:
    """Digest every file of the set (they must match the set file) and write NAME.lock.json; returns the lock."""
    yaml_path, lock_path = set_paths(name, sets_dir)
    ts = load_set(yaml_path)
    cases = _locked_cases(ts, root or default_data_root())
    lock = {
        "name": ts.name,
        "set_file": yaml_path.name,
        "set_file_sha256": file_sha256(yaml_path),
        "cases": cases,
        "set_digest": set_digest(cases),
    }
    if lock_path.exists() and not overwrite:
        raise UsageError(
            "the set is already locked", path=lock_path, hint="A locked set is not relocked; add a new set."
        )
    atomic_write_text(lock_path, json.dumps(lock, indent=1, sort_keys=True) + "\n", overwrite=overwrite)
    return lock


def verify_lock(name: str, root: Path | None = None, sets_dir: Path = SETS_DIR) -> tuple[TestSet, dict]:
    """The set and its lock, after checking the lock's own digest, the set file and every data file against it."""
    yaml_path, lock_path = set_paths(name, sets_dir)
    if not yaml_path.is_file():
        raise UsageError("no such test set file", path=yaml_path, hint="List them in validation/sets/.")
    if not lock_path.is_file():
        raise InvalidInputError(
            "the test set is not locked", path=lock_path, hint=f"Run `medseg validation lock {name}`."
        )
    try:
        lock = json.loads(lock_path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"unreadable lock file: {exc}", path=lock_path) from exc
    if not isinstance(lock, dict) or not isinstance(lock.get("cases"), list) or "set_file_sha256" not in lock:
        raise InvalidInputError("not a lock file of `medseg validation lock`", path=lock_path,
                                hint=f"Restore it, or run `medseg validation lock {name}` for a new set.")  # fmt: skip
    if set_digest(lock["cases"]) != lock.get("set_digest"):
        raise InvalidInputError("the lock file was edited: its set digest does not match its cases", path=lock_path)
    if file_sha256(yaml_path) != lock["set_file_sha256"]:
        raise InvalidInputError("the set file changed after it was locked", path=yaml_path,
                                hint="Restore it, or lock a new set version.")  # fmt: skip
    ts = load_set(yaml_path)
    root = root or default_data_root()
    locked = {c["case_id"]: c for c in lock["cases"] if isinstance(c, dict) and "case_id" in c}
    for case in ts.cases:
        for role, rel in case.paths().items():
            actual = digest_path(root / rel)
            entry = locked.get(case.case_id, {}).get("sha256", {})
            if actual != case.sha256[role] or actual != (entry.get(role) if isinstance(entry, dict) else None):
                raise InvalidInputError(
                    f"{case.case_id} {role} differs from the lock (SHA-256 {actual[:12]}...)",
                    path=root / rel,
                    hint="The locked test data was changed; validation refuses it.",
                )
    return ts, lock
