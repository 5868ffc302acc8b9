"""Manifests and configs: digests are checked, tampering is refused, unknown config keys are rejected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medseg.errors import InvalidInputError
from medseg.train.config import load_config
from medseg.train.manifest import ManifestSpec, build_manifest, digest_path, load_manifest, verify_manifest

REPO = Path(__file__).resolve().parents[1]


# Each training manifest and the locked test set of the model trained on it (model 1.0.0: CHAOS; 2.0 first runs: the
# two RadCTTACEomics CTs, because abdomen_v3 trains on CHAOS; stage 2: radcttace_0697, because abdomen_v4 also
# trains on radcttace_1211).
LOCKED_FOR = {"liver_v1": "liver_test_locked", "liver_ci": "liver_test_locked", "abdomen_v2": "liver_test_locked",
              "abdomen_v3": "abdomen_test_locked", "abdomen_v4": "abdomen_v4_test_locked"}  # fmt: skip


def test_committed_manifests_match_the_shared_data(shared: Path) -> None:
    for name in ("liver_ci", "liver_test_locked", "abdomen_test_locked", "abdomen_v4_test_locked"):
        manifest, sha = load_manifest(REPO / "data_manifests" / f"{name}.json")
        verify_manifest(manifest, shared)
        assert len(sha) == 64


def test_locked_test_cases_are_in_no_training_manifest_of_their_model() -> None:
    names = {p.stem for p in (REPO / "data_manifests").glob("*.json")}
    assert names - set(LOCKED_FOR) == set(LOCKED_FOR.values()), "every manifest is a training or a locked test set"
    for train, test in LOCKED_FOR.items():
        locked, _ = load_manifest(REPO / "data_manifests" / f"{test}.json")
        assert {e.split for e in locked.entries} == {"test"} and {e.label_type for e in locked.entries} == {"manual"}
        locked_digests = {d for e in locked.entries for d in e.sha256.values()}
        manifest, _ = load_manifest(REPO / "data_manifests" / f"{train}.json")
        used = {d for e in manifest.entries for d in e.sha256.values()}
        assert not used & locked_digests, f"{train}.json contains a CT of its locked test set {test}"


def test_changed_file_is_refused(shared: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "labels/amos").mkdir(parents=True)
    for f in ("amos_0013.nii.gz", "labels.json"):
        shutil.copy(shared / "labels/amos" / f, root / "labels/amos" / f)
    spec = ManifestSpec.model_validate({"name": "t", "groups": [{
        "glob": "labels/amos/*.nii.gz", "kind": "label_map", "labels_json": "labels/amos/labels.json",
        "source": "AMOS", "licence": "CC BY 4.0"}]})  # fmt: skip
    manifest = build_manifest(spec, root)
    verify_manifest(manifest, root)
    labels = root / "labels/amos/labels.json"
    labels.write_text(labels.read_text().replace("liver", "livre"))
    with pytest.raises(InvalidInputError, match="digest mismatch for amos_0013 labels_json"):
        verify_manifest(manifest, root)
    labels.unlink()
    with pytest.raises(InvalidInputError, match="missing"):
        verify_manifest(manifest, root)


def test_folder_digest_covers_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    d0 = digest_path(tmp_path)
    (tmp_path / "b").write_bytes(b"3")
    d1 = digest_path(tmp_path)
    (tmp_path / "b").rename(tmp_path / "c")
    assert len({d0, d1, digest_path(tmp_path)}) == 3


def test_config_rejects_unknown_keys_and_inconsistent_labels(tmp_path: Path) -> None:
    good = yaml.safe_load((REPO / "configs/liver_ci.yaml").read_text())
    cfg, sha = load_config(REPO / "configs/liver_ci.yaml")
    assert cfg.network.out_channels == len(cfg.labels) and len(sha) == 64
    for mutate, needle in (
        (lambda c: c["run"].update(epochz=3), "epochz"),
        (lambda c: c.update(labels={0: "background", 1: "liver", 2: "spleen"}), "out_channels"),
        (lambda c: c["data"].pop("manifest"), "manifest"),
    ):
        bad = json.loads(json.dumps(good))
        mutate(bad)
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(InvalidInputError, match=needle):
            load_config(path)
