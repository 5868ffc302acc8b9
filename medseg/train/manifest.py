"""Data manifests: every training/validation file with its SHA-256, split, source and licence.

Paths are relative to a data root (default `../shared/data` next to the repository, or `--data-root` /
`MEDSEG_DATA_ROOT`). Training refuses a manifest whose files do not match their digests and records the
manifest's own digest. Build one from a sources spec with `python -m medseg.train.manifest SPEC OUT`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medseg.digests import default_data_root, digest_path
from medseg.errors import InvalidInputError
from medseg.train.config import read_validated
from medseg.yamltext import load_yaml

REPO = Path(__file__).resolve().parents[2]
CASE_ID = re.compile(r"[A-Za-z0-9_.-]+")


class Entry(BaseModel):
    """One case: a label map alone (synthetic images are generated from it) or a real CT with its label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    case_id: str
    kind: Literal["label_map", "ct_pair"]
    image: str | None = None
    label: str
    labels_json: str | None = None
    liver_value: int | None = None
    sha256: dict[str, str]
    split: Literal["train", "val", "test"]
    source: str
    licence: str
    label_type: Literal["manual", "model"]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    entries: list[Entry] = Field(min_length=1)

    def split(self, split: str, kind: str | None = None) -> list[Entry]:
        return [e for e in self.entries if e.split == split and (kind is None or e.kind == kind)]


def _roles(e: Entry) -> dict[str, str | None]:
    """The files an entry names, by role (the keys its sha256 must hold)."""
    roles: dict[str, str | None] = {"label": e.label, "labels_json": e.labels_json}
    if e.kind == "ct_pair" or e.image is not None:
        roles["image"] = e.image
    return roles


def _path_problem(role: str, rel: str) -> str | None:
    """Why a file path of an entry could name a file outside the data root (absolute, or with a `..` part), else
    None: every file of a manifest lies under its data root."""
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith(("/", "\\")) or Path(rel).is_absolute() or (parts and parts[0].endswith(":")):
        return f"{role} path {rel!r} is absolute: paths are relative to the data root"
    if ".." in parts:
        return f"{role} path {rel!r} has a '..' part: every file must lie under the data root"
    return None


def _entry_problem(e: Entry) -> str | None:
    """What is wrong with one entry on its own (files named without digests, digests of nothing, paths leaving the
    data root), else None."""
    roles = _roles(e)
    if not CASE_ID.fullmatch(e.case_id) or ".." in e.case_id:
        return "case_id may hold only letters, digits, '_', '.' and '-' (no '..'): it names cache files and metrics"
    for role, rel in roles.items():
        problem = _path_problem(role, rel) if rel else None
        if problem:
            return problem
    if e.kind == "ct_pair" and (e.image is None or e.liver_value is None):
        return "a ct_pair needs image and liver_value"
    if e.kind == "label_map" and e.labels_json is None:
        return "a label_map needs labels_json"
    unknown = sorted(set(e.sha256) - {r for r, p in roles.items() if p})
    if unknown:
        return f"sha256 has {unknown} but the entry names no such file"
    missing = sorted(r for r, p in roles.items() if p and r not in e.sha256)
    if missing:
        return f"sha256 lacks {missing}: every file must have its digest"
    return None


def check_manifest(manifest: Manifest, path: Path) -> None:
    """Refuse (InvalidInputError naming `path` and the case) entries without every digest, repeated case ids,
    repeated files (the same CT or label under two entries, in one split or across train and val), and a manifest
    without training or validation cases."""
    seen_ids: set[str] = set()
    seen_files: dict[str, str] = {}
    for e in manifest.entries:
        problem = _entry_problem(e)
        if problem:
            name = e.case_id if CASE_ID.fullmatch(e.case_id) else ascii(e.case_id)
            raise InvalidInputError(f"case {name}: {problem}", path=path, hint="Rebuild the manifest.")
        if e.case_id in seen_ids:
            raise InvalidInputError(f"case {e.case_id} is listed twice", path=path, hint="Keep one entry per case.")
        seen_ids.add(e.case_id)
        for role in ("image", "label"):
            digest = e.sha256.get(role)
            if digest is None:
                continue
            if digest in seen_files:
                raise InvalidInputError(
                    f"case {e.case_id} ({e.split}) has the same {role} (SHA-256 {digest[:12]}...) as "
                    f"{seen_files[digest]}",
                    path=path, hint="One scan may be one case only; train and validation must not share data.",
                )  # fmt: skip
            seen_files[digest] = f"{e.case_id} ({e.split})"
    for split in ("train", "val"):
        if not manifest.split(split):
            name = "training" if split == "train" else "validation"
            raise InvalidInputError(f"the {name} split of the manifest is empty", path=path,
                                    hint="A model is trained on 'train' cases and selected on 'val' cases.")


def load_manifest(path: Path) -> tuple[Manifest, str]:
    """Parse a manifest; returns it and the SHA-256 of the manifest file."""
    return read_validated(path, Manifest, "manifest", parse=json.loads)


def under_root(data_root: Path, rel: str, case_id: str, manifest_path: Path | None) -> Path:
    """`data_root / rel`, refused (InvalidInputError naming the manifest and case) when the path is absolute, has a
    `..` part or resolves (through a link) outside the data root."""
    problem = _path_problem("file", rel)
    path = data_root / rel
    if problem is None and not path.resolve().is_relative_to(data_root.resolve()):
        problem = f"file {rel!r} resolves outside the data root"
    if problem:
        raise InvalidInputError(f"case {case_id}: {problem}", path=manifest_path,
                                hint="Every manifest file must lie under the data root; rebuild the manifest.")
    return path


def verify_manifest(manifest: Manifest, data_root: Path, manifest_path: Path | None = None) -> None:
    """Check every file lies under the data root and matches its SHA-256; raise InvalidInputError naming the first
    file outside the root, mismatch or missing file."""
    for e in manifest.entries:
        for rel in (p for p in _roles(e).values() if p):
            under_root(data_root, rel, e.case_id, manifest_path)
        for role, digest in e.sha256.items():
            rel = _roles(e).get(role)
            if rel is None:
                raise InvalidInputError(f"case {e.case_id}: sha256 names an unknown file role {role!r}",
                                        path=manifest_path)  # fmt: skip
            actual = digest_path(data_root / rel)
            if actual != digest:
                raise InvalidInputError(
                    f"manifest digest mismatch for {e.case_id} {role}: {actual[:12]}... != {digest[:12]}...",
                    path=data_root / rel,
                    hint=f"The data changed since {manifest_path or 'the manifest'} was written; training refuses it.",
                )


class SourceSpec(BaseModel):
    """A group of files for a manifest: a glob of label maps or explicit CT pairs."""

    model_config = ConfigDict(extra="forbid")

    glob: str | None = None
    pairs: list[dict[str, str]] = []
    kind: Literal["label_map", "ct_pair"]
    labels_json: str | None = None
    liver_value: int | None = None
    split: Literal["train", "val", "test"] = "train"
    val_cases: list[str] = []
    source: str
    licence: str
    label_type: Literal["manual", "model"] = "manual"


class ManifestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    groups: list[SourceSpec]


def build_manifest(spec: ManifestSpec, data_root: Path) -> Manifest:
    """Resolve a sources spec against the data root and digest every file."""
    entries: list[Entry] = []
    for g in spec.groups:
        items = (
            [{"label": p.relative_to(data_root).as_posix()} for p in sorted(data_root.glob(g.glob))] if g.glob else []
        )
        items += g.pairs
        for item in items:
            label = item["label"]
            case_id = item.get("case_id") or Path(label).name.split(".")[0]
            roles = {"label": label, "image": item.get("image"), "labels_json": g.labels_json}
            sha = {r: digest_path(data_root / p) for r, p in roles.items() if p}
            split = "val" if case_id in g.val_cases else g.split
            entries.append(Entry(
                case_id=case_id, kind=g.kind, image=roles["image"], label=label, labels_json=g.labels_json,
                liver_value=g.liver_value, sha256=sha, split=split, source=g.source, licence=g.licence,
                label_type=g.label_type,
            ))  # fmt: skip
    if not entries:
        raise InvalidInputError("the sources spec matches no files under the data root", path=data_root,
                                hint="Check the spec's globs and pairs and --data-root.")  # fmt: skip
    return Manifest(name=spec.name, description=spec.description, entries=entries)


def main(argv: list[str] | None = None) -> None:
    """`python -m medseg.train.manifest SPEC.yaml OUT.json [--data-root DIR]`."""
    from medseg.io.atomic import atomic_write_text

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("spec", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    spec = read_validated(a.spec, ManifestSpec, "manifest sources spec", parse=load_yaml)[0]
    manifest = build_manifest(spec, a.data_root or default_data_root())
    atomic_write_text(a.out, manifest.model_dump_json(indent=1, exclude_none=True) + "\n", overwrite=a.overwrite)


if __name__ == "__main__":
    from medseg.train.entry import run_entry

    raise SystemExit(run_entry(main))
