"""Locked test sets and independence: a changed file, set file or lock, and any leak of training data, are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from cli_run import run_cli

from medseg.errors import InvalidInputError, UsageError
from medseg.models.registry import resolve_model
from medseg.validation.independence import check_independence, require_independence
from medseg.validation.sets import REPO, SETS_DIR, load_set, lock_set, set_paths, verify_lock

SHIPPED = "liver_real_manual_v1"


def copy_set(tmp_path: Path, edit=None) -> Path:
    """The shipped set file copied into tmp_path/sets (optionally edited), not yet locked."""
    folder = tmp_path / "sets"
    folder.mkdir(exist_ok=True)
    doc = yaml.safe_load(set_paths(SHIPPED)[0].read_text())
    if edit is not None:
        edit(doc)
    (folder / f"{doc['name']}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


@pytest.mark.req("REQ-010")
def test_the_shipped_set_matches_its_lock_and_the_data(shared) -> None:
    ts, lock = verify_lock(SHIPPED, shared)
    assert [c.case_id for c in ts.cases] == ["chaos_ct_set3", "radcttace_1211", "radcttace_0697"]
    assert all(c.label_type == "manual" for c in ts.cases)
    assert len(lock["set_digest"]) == 64 and lock["set_file_sha256"]


@pytest.mark.req("REQ-011")
def test_the_shipped_set_is_independent_of_every_training_manifest(shared) -> None:
    card = resolve_model("liver").card
    result = check_independence(load_set(set_paths(SHIPPED)[0]), card, shared)
    assert result.conflicts == [] and result.training_cases >= 60
    assert [m["file"] for m in result.manifests] == ["data_manifests/liver_v1.json"]


@pytest.mark.req("REQ-010", "REQ-011")
def test_the_default_models_set_is_locked_and_independent_and_v1_is_not(shared) -> None:
    """Abdomen 2.0.0 trained on CHAOS and radcttace_1211: its set holds radcttace_0697 only, and v1 is refused."""
    ts, lock = verify_lock("liver_real_manual_v2", shared)
    assert [c.case_id for c in ts.cases] == ["radcttace_0697"] and len(lock["set_digest"]) == 64
    card = resolve_model(None, "liver").card
    assert card.metrics["locked_test_real_ct"]["test_set"]["manifest"] == "abdomen_v4_test_locked"
    result = check_independence(ts, card, shared)
    assert result.conflicts == [] and [m["file"] for m in result.manifests] == ["data_manifests/abdomen_v4.json"]
    old = check_independence(load_set(set_paths(SHIPPED)[0]), card, shared)
    assert {c.split(":")[0] for c in old.conflicts} >= {"chaos_ct_set3", "radcttace_1211"}, old.conflicts


def data_with_an_edited_label(tmp_path: Path, shared: Path) -> tuple[Path, Path]:
    """A data root of links to the shipped set's real data, with radcttace_0697's label replaced by an edited copy;
    returns the root and that label."""
    root = tmp_path / "data"
    for case in ("chaos_ct_sample", "radcttace_1211", "radcttace_0697"):
        (root / "ct" / case).mkdir(parents=True)
        for f in (shared / "ct" / case).iterdir():
            (root / "ct" / case / f.name).symlink_to(f)
    label = root / "ct/radcttace_0697/liver.nii.gz"
    label.unlink()
    data = bytearray((shared / "ct/radcttace_0697/liver.nii.gz").read_bytes())
    data[-10] ^= 0xFF
    label.write_bytes(bytes(data))
    return root, label


@pytest.mark.req("REQ-010")
def test_lock_refuses_data_that_differs_from_the_set_file(shared, tmp_path) -> None:
    def edit(doc):
        doc["cases"][2]["sha256"]["label"] = "0" * 64

    sets = copy_set(tmp_path, edit)
    with pytest.raises(InvalidInputError, match="radcttace_0697 label"):
        lock_set(SHIPPED, shared, sets)


@pytest.mark.req("REQ-010")
def test_a_changed_file_set_file_or_lock_is_refused(shared, tmp_path) -> None:
    sets = copy_set(tmp_path)
    lock_set(SHIPPED, shared, sets)
    verify_lock(SHIPPED, shared, sets)
    with pytest.raises(UsageError, match="already locked"):
        lock_set(SHIPPED, shared, sets)
    root, _ = data_with_an_edited_label(tmp_path, shared)
    with pytest.raises(InvalidInputError, match="radcttace_0697 label differs from the lock"):
        verify_lock(SHIPPED, root, sets)
    yaml_path, lock_path = set_paths(SHIPPED, sets)
    lock = json.loads(lock_path.read_text())
    lock["cases"][0]["sha256"]["image"] = "f" * 64
    lock_path.write_text(json.dumps(lock))
    with pytest.raises(InvalidInputError, match="lock file was edited"):
        verify_lock(SHIPPED, shared, sets)
    lock_set(SHIPPED, shared, sets, overwrite=True)
    yaml_path.write_text(yaml_path.read_text().replace("Three real", "Four real"))
    with pytest.raises(InvalidInputError, match="set file changed"):
        verify_lock(SHIPPED, shared, sets)


@pytest.mark.req("REQ-010")
def test_validate_exits_3_on_an_unlocked_or_altered_set(shared, tmp_path, capsys) -> None:
    sets = copy_set(tmp_path)
    code, out = run_cli(["validate", "--set", str(sets / f"{SHIPPED}.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert code == 3 and "not locked" in out and "Traceback" not in out
    assert not (tmp_path / "o").exists()  # refused before any work: no empty output folder left behind
    lock_set(SHIPPED, shared, sets)
    (sets / f"{SHIPPED}.yaml").write_text((sets / f"{SHIPPED}.yaml").read_text() + "\n# edited\n")
    code, out = run_cli(["validate", "--set", str(sets / f"{SHIPPED}.yaml"), "--out", str(tmp_path / "o2")], capsys)
    assert code == 3 and "changed after it was locked" in out
    assert len(out.strip().splitlines()) == 1


def leaking_set(tmp_path: Path, shared: Path, case: dict) -> Path:
    """A locked set of one case (given as a set-file case entry)."""
    sets = tmp_path / "sets"
    sets.mkdir(exist_ok=True)
    doc = {"name": "leak", "description": "leak test", "organ": "liver", "cases": [case]}
    (sets / "leak.yaml").write_text(yaml.safe_dump(doc))
    lock_set("leak", shared, sets)
    return sets / "leak.yaml"


def training_pair(shared: Path) -> dict:
    from medseg.validation.sets import digest_path

    image, label = "ct/totalseg_example_ct_sm/image.nii.gz", "ct/totalseg_example_ct_sm/liver.nii.gz"
    return {"case_id": "ts_sm", "patient": "someone-new", "image": image, "label": label,
            "sha256": {"image": digest_path(shared / image), "label": digest_path(shared / label)},
            "source": "TotalSegmentator", "licence": "Apache-2.0", "label_type": "model"}  # fmt: skip


@pytest.mark.req("REQ-011")
def test_a_training_case_in_the_test_set_is_refused_with_exit_3(shared, tmp_path, capsys) -> None:
    path = leaking_set(tmp_path, shared, training_pair(shared))
    code, out = run_cli(["validate", "--model", "liver", "--set", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 3, out
    assert "not independent" in out and "totalseg_example_ct_sm" in out and "file digest" in out
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.req("REQ-011")
def test_same_patient_or_same_dicom_uid_counts_as_a_leak(shared, tmp_path) -> None:
    card = resolve_model("liver").card
    case = training_pair(shared) | {
        "image": "ct/radcttace_0697/image.nii.gz",
        "label": "ct/radcttace_0697/liver.nii.gz",
    }
    case["sha256"] = {"image": "5a1b279cc9464fd1dc88db36af7435e57301415014f7b7c31f793b7ab232cbe9",
                      "label": "c997770f1b87e89590322fb02d04a1bfda2526f9499ae67503b87600324eb842"}  # fmt: skip
    case["patient"] = "WORD 0014"  # a WORD training case under another spelling
    ts = load_set(leaking_set(tmp_path, shared, case))
    result = check_independence(ts, card, shared)
    assert any("same patient as training case word_0014" in c for c in result.conflicts), result.conflicts
    with pytest.raises(InvalidInputError, match="not independent"):
        require_independence(result, ts.name)
    # a training manifest holding the CHAOS DICOM series: the test case carries only its UIDs, not the files
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    entry = {"case_id": "chaos_dicom", "kind": "ct_pair", "image": "ct/chaos_ct_sample/dicom", "label": "x",
             "sha256": {"image": "1" * 64}, "split": "train"}  # fmt: skip
    (repo / "m" / "train.json").write_text(json.dumps({"name": "t", "entries": [entry]}))
    other = card.model_copy(update={"training": {"manifest": {"file": "m/train.json"}}})
    chaos = load_set(SETS_DIR / f"{SHIPPED}.yaml").model_copy()
    only_uids = chaos.model_copy(update={"cases": [chaos.cases[0].model_copy(update={"dicom": None})]})
    result = check_independence(only_uids, other, shared, repo)
    assert [c for c in result.conflicts if "DICOM UID" in c], result.conflicts


@pytest.mark.req("REQ-011")
def test_a_training_manifest_that_differs_from_the_card_is_refused(shared, tmp_path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "data_manifests", repo / "data_manifests")
    path = repo / "data_manifests/liver_v1.json"
    path.write_text(path.read_text().replace('"split": "val"', '"split": "train"', 1))
    card = resolve_model("liver").card
    with pytest.raises(InvalidInputError, match="differs from the model card"):
        check_independence(load_set(SETS_DIR / f"{SHIPPED}.yaml"), card, shared, repo)


@pytest.mark.req("REQ-010")
def test_validation_lock_command_writes_once(shared, tmp_path, capsys) -> None:
    sets = copy_set(tmp_path)
    code, out = run_cli(["validation", "lock", str(sets / f"{SHIPPED}.yaml")], capsys)
    lock = json.loads((sets / f"{SHIPPED}.lock.json").read_text())
    assert code == 0 and lock["set_digest"] in out and "3 case(s)" in out
    assert lock["set_digest"] == json.loads(set_paths(SHIPPED)[1].read_text())["set_digest"]
    code, out = run_cli(["validation", "lock", str(sets / f"{SHIPPED}.yaml")], capsys)
    assert code == 2 and "already locked" in out


@pytest.mark.req("REQ-010")
@pytest.mark.parametrize("change", ["same scan under another id and patient", "same case id", "a digest missing"])
def test_a_set_that_lists_a_scan_twice_or_leaves_a_file_undigested_is_refused(shared, tmp_path, change) -> None:
    """One real CT listed three times once passed validation as three cases (a degenerate CI of n=3)."""

    def edit(doc):
        if change == "a digest missing":
            doc["cases"][2]["sha256"].pop("label")
            return
        twin = dict(doc["cases"][2]) | {"case_id": "another_id", "patient": "P-B"}
        if change == "same case id":
            twin = dict(doc["cases"][1]) | {"case_id": doc["cases"][2]["case_id"]}
        doc["cases"].append(twin)

    sets = copy_set(tmp_path, edit)
    with pytest.raises(InvalidInputError, match="invalid test set file"):
        lock_set(SHIPPED, shared, sets)


@pytest.mark.req("REQ-010")
def test_the_lock_cannot_certify_itself_the_set_files_digests_bind_the_data(shared, tmp_path) -> None:
    """Changing a label and rewriting its digest in the (unsigned) lock, set digest recomputed, is still refused:
    the data must also match the SHA-256 written in the set file."""
    from medseg.validation.sets import digest_path, set_digest

    sets = copy_set(tmp_path)
    lock_set(SHIPPED, shared, sets)
    root, label = data_with_an_edited_label(tmp_path, shared)
    lock_path = set_paths(SHIPPED, sets)[1]
    lock = json.loads(lock_path.read_text())
    lock["cases"][2]["sha256"]["label"] = digest_path(label)
    lock["set_digest"] = set_digest(lock["cases"])
    lock_path.write_text(json.dumps(lock))
    with pytest.raises(InvalidInputError, match="radcttace_0697 label differs"):
        verify_lock(SHIPPED, root, sets)


@pytest.mark.req("REQ-010")
@pytest.mark.parametrize("content", ["[]", '{"cases": {}}', '{"cases": [], "set_digest": "x"}'])
def test_a_lock_that_is_not_a_lock_is_refused_in_one_line(shared, tmp_path, content) -> None:
    sets = copy_set(tmp_path)
    set_paths(SHIPPED, sets)[1].write_text(content)
    with pytest.raises(InvalidInputError, match="not a lock file"):
        verify_lock(SHIPPED, shared, sets)
    with pytest.raises(UsageError, match="no such test set file"):
        verify_lock(str(tmp_path / "missing.yaml"), shared, sets)


@pytest.mark.req("REQ-011")
def test_a_training_ct_re_saved_in_another_form_is_refused(shared, tmp_path) -> None:
    """CHAOS set 3 trained the default model; re-saved (uncompressed, float, axes flipped) under a new patient name,
    or given as its DICOM series, it once passed the independence check, which compared file bytes only."""
    import nibabel as nib
    import numpy as np

    from medseg.validation.sets import digest_path

    card = resolve_model(None, "liver").card
    root = tmp_path / "data"
    (root / "resaved").mkdir(parents=True)
    for name, dtype in (("image", np.float32), ("liver", np.uint8)):
        img = nib.load(shared / f"ct/chaos_ct_sample/{name}.nii.gz")
        flipped = img.as_reoriented(np.array([[0, -1], [1, 1], [2, 1]]))
        data = np.asarray(flipped.dataobj).astype(dtype)
        nib.save(nib.Nifti1Image(data, flipped.affine), root / f"resaved/{name}.nii")
    (root / "ct").mkdir()
    (root / "ct" / "chaos_ct_sample").symlink_to(shared / "ct" / "chaos_ct_sample")
    cases = {
        "re-saved": {"image": "resaved/image.nii", "label": "resaved/liver.nii"},
        "its DICOM series": {"image": "ct/chaos_ct_sample/dicom", "label": "resaved/liver.nii"},
    }
    for why, paths in cases.items():
        case = {"case_id": "anon_001", "patient": "Anon-001", "source": "a colleague", "licence": "?",
                "label_type": "manual", **paths,
                "sha256": {role: digest_path(root / rel) for role, rel in paths.items()}}  # fmt: skip
        sets = tmp_path / why
        sets.mkdir()
        doc = {"name": "s", "description": why, "organ": "liver", "cases": [case]}
        (sets / "s.yaml").write_text(yaml.safe_dump(doc))
        result = check_independence(load_set(sets / "s.yaml"), card, root)
        assert any("same voxel content as training case chaos" in c for c in result.conflicts), (why, result.conflicts)


@pytest.mark.req("REQ-012")
def test_a_ci_criterion_over_fewer_than_three_patients_is_not_evaluable() -> None:
    """One case gives a zero-width bootstrap 'CI' (0.901-0.901) that passed AC-02 (lower bound >= 0.85)."""
    from medseg.metrics import aggregate
    from medseg.validation.acceptance import acceptance_path, evaluate, load_acceptance

    acc, _ = load_acceptance(acceptance_path("liver_v1"))
    values = {"dice": 0.95, "sensitivity": 0.97, "hd95_mm": 5.0, "abs_volume_diff_pct": 3.0}

    def verdicts(patients: list[str]) -> dict[str, str]:
        aggs = {m: aggregate([v] * len(patients), patients, 1, 200).to_json() for m, v in values.items()}
        return {c["id"]: c["verdict"] for c in evaluate(acc, aggs, [])["criteria"]}

    one = verdicts(["p1"])
    assert one["AC-02"] == "not_evaluable" and one["AC-01"] == "pass"
    assert verdicts(["p1", "p2", "p3"])["AC-02"] == "pass"


@pytest.mark.req("REQ-010", "REQ-011")
def test_one_scan_re_saved_under_other_ids_and_patients_is_refused(shared, tmp_path) -> None:
    """Byte-identical duplicates were refused, but the same CT re-gzipped or saved as float under other case ids and
    patients counted as three cases of three patients, making a zero-width CI 'evaluable' (it passed)."""
    import nibabel as nib
    import numpy as np

    from medseg.validation.sets import digest_path

    card = resolve_model(None, "liver").card
    root = tmp_path / "data"
    (root / "ct").mkdir(parents=True)
    (root / "ct" / "radcttace_0697").symlink_to(shared / "ct" / "radcttace_0697")
    (root / "copy").mkdir()
    img = nib.load(shared / "ct/radcttace_0697/image.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine), root / "copy/image.nii")
    nib.save(nib.load(shared / "ct/radcttace_0697/liver.nii.gz"), root / "copy/liver.nii")
    cases = []
    for n, folder in enumerate(["ct/radcttace_0697", "copy"]):
        ext = ".nii.gz" if n == 0 else ".nii"
        paths = {"image": f"{folder}/image{ext}", "label": f"{folder}/liver{ext}"}
        cases.append({"case_id": f"c{n}", "patient": f"P-{n}", "source": "s", "licence": "l", "label_type": "manual",
                      **paths, "sha256": {r: digest_path(root / p) for r, p in paths.items()}})  # fmt: skip
    doc = {"name": "s", "description": "d", "organ": "liver", "cases": cases}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    result = check_independence(load_set(tmp_path / "s.yaml"), card, root)
    assert result.duplicates and "c1 is the same scan as c0" in result.duplicates[0]
    with pytest.raises(InvalidInputError, match="lists one scan twice"):
        require_independence(result, "s")


def test_patient_ids_that_differ_only_in_spelling_are_one_patient() -> None:
    from medseg.validation.analysis import aggregates

    metrics = {"dice": 0.9, "iou": 0.8, "hd95_mm": 5.0, "assd_mm": 1.0, "nsd": 0.9, "volume_diff_ml": 1.0,
               "volume_diff_pct": 1.0, "sensitivity": 0.9, "precision": 0.9, "fn_rate": 0.1}  # fmt: skip
    cases = [{"patient": p, "metrics": {"liver": metrics}} for p in ("P1", "p1", "P-1")]
    agg = aggregates(cases, "liver", 1, 100)["dice"]
    assert agg["n_patients"] == 1 and not agg["interpretable"]
