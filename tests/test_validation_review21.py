"""Review 21 of `medseg validate` and traceability: partial test runs, foreign MLflow stores, unverified training
files, tests outside the repository, an --out that appears during the run, MLflow's log, the unsigned page's
advice, and mirrored or relabelled copies of training cases."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from medseg.validation.traceability import build_matrix

TESTS = Path(__file__).parent
REPO = TESTS.parent
pytestmark = pytest.mark.req("REQ-021")

SAMPLE = """
import pytest

@pytest.mark.req("REQ-A")
def test_a():
    pass

@pytest.mark.req("REQ-A")
def test_b():
    pass

def test_c():
    assert 1 + 1 == 3
"""


def _sample_run(folder: Path, *args: str) -> Path:
    """JUnit XML of a real pytest run (with tests/req_plugin.py) of SAMPLE in `folder`, with pytest `args`."""
    folder.mkdir()
    (folder / "test_sample.py").write_text(SAMPLE)
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    req: requirement ids\n")
    env = os.environ | {"PYTHONPATH": str(TESTS)}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "req_plugin", "-p", "no:randomly",
                    "-p", "no:cacheprovider", f"--junitxml={folder / 'junit.xml'}", *args],
                   cwd=folder, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    return folder / "junit.xml"


def _risk(folder: Path) -> Path:
    folder.mkdir()
    reqs = [{"id": "REQ-A", "type": "functional", "title": "A"}]
    (folder / "requirements.yaml").write_text(yaml.safe_dump({"requirements": reqs}))
    (folder / "hazards.yaml").write_text(yaml.safe_dump({"hazards": []}))
    return folder


def _partial_gaps(matrix: dict) -> list[str]:
    return [g for g in matrix["gaps"] if "subset" in g or "which tests it selected" in g]


@pytest.mark.parametrize(
    "args",
    [["-k", "test_a"], ["--deselect", "test_sample.py::test_c"], ["test_sample.py::test_a"], ["-m", "req"]],
    ids=["-k", "--deselect", "node-id", "-m"],
)
def test_a_partial_test_run_is_a_traceability_gap(tmp_path, args) -> None:
    """Item 1: a run of some tests (the failing test_c left out) verified REQ-A with a complete matrix."""
    junit = _sample_run(tmp_path / "run", *args)
    m = build_matrix(junit, {}, _risk(tmp_path / "risk"), test_files={"test_sample.py"})
    assert m["junit"]["failed"] == 0 and not m["complete"] and not m["junit"]["full_run"], m["gaps"]
    assert len(_partial_gaps(m)) == 1 and "only a run of every test" in _partial_gaps(m)[0], m["gaps"]


@pytest.mark.parametrize("args", [[], ["-n", "2"], ["."]], ids=["plain", "xdist", "rootdir"])
def test_a_full_test_run_is_not_partial(tmp_path, args) -> None:
    """CI's scripts/test.sh runs pytest with -n 2 and no test arguments: that run counts as full."""
    junit = _sample_run(tmp_path / "run", *args)
    m = build_matrix(junit, {}, _risk(tmp_path / "risk"), test_files={"test_sample.py"})
    assert m["junit"]["full_run"] and not _partial_gaps(m) and m["junit"]["failed"] == 1, m["gaps"]


@pytest.mark.req("REQ-021")
def test_a_test_file_outside_the_repository_verifies_nothing(tmp_path) -> None:
    """Item 4: a genuine run (this code's digest) of a test file outside tests/ verified REQ-A."""
    junit = _sample_run(tmp_path / "run")
    m = build_matrix(junit, {}, _risk(tmp_path / "risk"))  # default: only this repository's tests/ files count
    row = next(r for r in m["requirements"] if r["id"] == "REQ-A")
    assert row["status"] == "no_test" and not m["complete"], m["gaps"]
    assert "test test_sample.py::test_a is not one of this code's test files" in "\n".join(m["gaps"])
    assert m["junit"]["outside_test_files"] == 3


def _tables(db: Path) -> set[str]:
    import sqlite3

    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def test_the_tracking_store_refuses_the_audit_store_and_a_foreign_database(tmp_path, monkeypatch) -> None:
    """Item 2: --tracking-uri sqlite:/// of the audit store or another application's database got MLflow's tables."""
    import shutil
    import sqlite3

    from medseg.audit.config import load_config
    from medseg.audit.store import AuditStore
    from medseg.errors import InvalidInputError, UsageError
    from medseg.validation.tracking import open_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config()  # the test's own audit folder (conftest)
    with AuditStore.open(config):
        pass
    trail = config.db_path
    before = _tables(trail)
    with pytest.raises(UsageError, match="audit store's folder") as exc:
        open_store(f"sqlite:///{trail}", tmp_path / "val")
    assert exc.value.exit_code == 2 and _tables(trail) == before
    copy = tmp_path / "copy-of-audit.db"
    shutil.copy(trail, copy)
    foreign = tmp_path / "lab.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE lab_results(id INTEGER PRIMARY KEY, value TEXT)")
    for db in (copy, foreign):
        tables = _tables(db)
        with pytest.raises(InvalidInputError, match="not an MLflow tracking store") as exc:
            open_store(f"sqlite:///{db}", tmp_path / "val")
        assert exc.value.exit_code == 3 and _tables(db) == tables, db
    store = tmp_path / "mlflow.db"  # a new file becomes an MLflow store, which is then opened again
    assert open_store(f"sqlite:///{store}", tmp_path / "val") == open_store(None, tmp_path / "val")
    assert {"alembic_version", "experiments", "runs"} <= _tables(store)


@pytest.mark.req("REQ-011")
def test_training_files_that_differ_from_their_manifest_leave_independence_unproven(shared, tmp_path) -> None:
    """Item 3: the data root's training CT (chaos_ct_set3) was not the one the manifest digests (+7 HU), yet its
    voxels were compared and the set called independent."""
    import nibabel as nib
    import numpy as np

    from medseg.errors import InvalidInputError
    from medseg.models.registry import resolve_model
    from medseg.validation.independence import check_independence, require_independence
    from medseg.validation.sets import SETS_DIR, load_set

    root = tmp_path / "root"
    (root / "ct").mkdir(parents=True)
    for d in shared.iterdir():
        if d.name != "ct":
            (root / d.name).symlink_to(d)
    for d in (shared / "ct").iterdir():
        if d.name != "chaos_ct_sample":
            (root / "ct" / d.name).symlink_to(d)
    chaos = root / "ct" / "chaos_ct_sample"
    chaos.mkdir()
    for name in ("dicom", "liver.nii.gz"):
        (chaos / name).symlink_to(shared / "ct" / "chaos_ct_sample" / name)
    img = nib.load(shared / "ct" / "chaos_ct_sample" / "image.nii.gz")
    shifted = np.asanyarray(img.dataobj).astype(np.int16) + 7
    nib.save(nib.Nifti1Image(shifted, img.affine, img.header), chaos / "image.nii.gz")
    ts = load_set(SETS_DIR / "liver_real_manual_v2.yaml")
    result = check_independence(ts, resolve_model(None, "liver").card, root)
    assert any(u.endswith(":chaos_ct_set3 (image differs from the manifest's SHA-256)")
               for u in result.uncompared_training), result.uncompared_training  # fmt: skip
    assert result.to_json()["independent"] is False
    with pytest.raises(InvalidInputError, match="as their manifest digests them") as exc:
        require_independence(result, ts.name)
    assert exc.value.exit_code == 3


@pytest.mark.req("REQ-019")
def test_a_record_is_committed_only_onto_an_absent_or_empty_out(tmp_path) -> None:
    """Item 5: an --out another process created and filled while validate ran was merged with the record."""
    from medseg.cli.validate import commit_new_folder
    from medseg.errors import UsageError

    def stage(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "report.json").write_text("{}")
        return folder

    out = tmp_path / "val"
    out.mkdir()
    (out / "notes.json").write_text('{"other": 1}')
    (out / "traceability.json").write_text('{"from": "another validation"}')
    record = stage(".tmp-val-1")
    with pytest.raises(UsageError, match="created and written by something else") as exc:
        commit_new_folder(record, out)
    assert exc.value.exit_code == 2 and record.is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["notes.json", "traceability.json"]
    assert (out / "traceability.json").read_text() == '{"from": "another validation"}'
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError):
        commit_new_folder(record, tmp_path / "file")
    for name, make in (("absent", False), ("empty", True)):
        target = tmp_path / name
        if make:
            target.mkdir()
        commit_new_folder(stage(f".tmp-{name}"), target)
        assert [p.name for p in target.iterdir()] == ["report.json"], name


def test_a_failing_mlflow_store_writes_one_json_line_under_log_json(tmp_path) -> None:
    """Item 6: MLflow's own log printed a ~35-line SQLAlchemy traceback on stderr before medseg's error line."""
    import json
    import logging

    from medseg.train.tracking import _quiet_mlflow_logs
    from medseg.validation.tracking import MLFLOW_LOGGERS

    (tmp_path / "dir").mkdir()  # sqlite:/// naming a folder: SQLAlchemy cannot open it
    env = os.environ | {"MEDSEG_AUDIT_DIR": str(tmp_path / "audit")}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["--log-json", "validate", "--set", "liver_real_manual_v2", "--out", str(tmp_path / "val"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'dir'}"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "medseg", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip
    lines = proc.stderr.splitlines()
    assert proc.returncode == 4 and len(lines) == 1, proc.stderr
    assert "cannot open the MLflow store" in json.loads(lines[0])["message"]
    _quiet_mlflow_logs()  # train's copy (train may not import validation) sets the same levels
    assert all(logging.getLogger(name).level == logging.CRITICAL for name in MLFLOW_LOGGERS)


@pytest.mark.parametrize("module", ["medseg.validation.tracking:quiet_mlflow_logs",
                                    "medseg.train.tracking:_quiet_mlflow_logs"])  # fmt: skip
def test_mlflow_and_sqlalchemy_logs_stay_off_stderr(module) -> None:
    """Item 6: MLflow's WARNING with the SQLAlchemy traceback (a failing store, a full disk) went to stderr through
    MLflow's own handler."""
    name, func = module.split(":")
    code = (f"import logging\nfrom {name} import {func}\n{func}()\n"
            "logging.getLogger('mlflow.store.db.utils').warning('SQLAlchemy engine could not be created')\n"
            "logging.getLogger('mlflow.store.db.utils').error('Traceback (most recent call last)')\n"
            "logging.getLogger('sqlalchemy.engine').error('(sqlite3.OperationalError) disk I/O error')\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.req("REQ-020")
def test_the_unsigned_page_suggests_approved_only_for_a_record_that_supports_release(shared, tmp_path) -> None:
    """Item 7: report.html of a record that does not support release told the reader to sign it --meaning approved,
    which `report sign` refuses."""
    import json

    from test_validation_review19 import small_record

    from medseg.validation.html import render

    small_record(tmp_path / "rec", shared)
    report = json.loads((tmp_path / "rec" / "report.json").read_text())
    assert report["release"]["supported"] is False
    page = (tmp_path / "rec" / "report.html").read_text()
    assert "--meaning reviewed</code>" in page and "--meaning approved" not in page
    supported = render(report | {"release": {"supported": True, "reasons": []}})
    assert "--meaning approved</code>" in supported and "--meaning reviewed" not in supported


def _variant_set(root: Path, sets: Path, name: str, image, label, label_value: int) -> Path:
    """A one-case set file (as `medseg validation lock` reads it) of an altered copy of the training case
    totalseg_example_ct_sm, written under `root`."""
    import nibabel as nib

    from medseg.digests import digest_path

    src = root / "ct" / "totalseg_example_ct_sm"
    folder = root / "ct" / name
    folder.mkdir(parents=True)
    img, lab = nib.load(src / "image.nii.gz"), nib.load(src / "liver.nii.gz")
    nib.save(nib.Nifti1Image(image(np.asanyarray(img.dataobj)), img.affine), folder / "image.nii.gz")
    nib.save(nib.Nifti1Image(label(np.asanyarray(lab.dataobj)), lab.affine), folder / "liver.nii.gz")
    case = {"case_id": name, "patient": f"probe-{name}", "image": f"ct/{name}/image.nii.gz",
            "label": f"ct/{name}/liver.nii.gz", "label_value": label_value,
            "sha256": {"image": digest_path(folder / "image.nii.gz"), "label": digest_path(folder / "liver.nii.gz")},
            "source": "test", "licence": "test", "label_type": "manual",
            "acquisition": {"manufacturer": "unknown"}}  # fmt: skip
    path = sets / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "description": "t", "organ": "liver", "cases": [case]}))
    return path


@pytest.mark.req("REQ-011")
def test_a_mirrored_or_relabelled_copy_of_a_training_case_is_not_independent(shared, tmp_path) -> None:
    """Item 8: a copy of a training case with its arrays flipped (affine kept), or its label stored as value 2 with
    label_value 2 (and the CT shifted by 1 HU), passed the independence check."""
    from medseg.models.registry import resolve_model
    from medseg.validation.independence import check_independence
    from medseg.validation.sets import load_set

    root, sets = tmp_path / "root", tmp_path / "sets"
    (root / "ct").mkdir(parents=True)
    sets.mkdir()
    for d in shared.iterdir():
        if d.name != "ct":
            (root / d.name).symlink_to(d)
    for d in (shared / "ct").iterdir():
        (root / "ct" / d.name).symlink_to(d)
    variants = {
        "mirrored": (lambda a: a[::-1].astype(np.int16), lambda a: a[::-1].astype(np.uint8), 1),
        "mirrored_2axes": (lambda a: a[::-1, :, ::-1].astype(np.int16), lambda a: a[::-1, :, ::-1].astype(np.uint8), 1),
        "relabelled": (lambda a: (a + 1).astype(np.int16), lambda a: (a * 2).astype(np.uint8), 2),
    }  # fmt: skip
    card = resolve_model("liver", "liver").card
    for name, (image, label, value) in variants.items():
        ts = load_set(_variant_set(root, sets, name, image, label, value))
        result = check_independence(ts, card, root)
        assert any("same voxel content as training case totalseg_example_ct_sm" in c for c in result.conflicts), (
            name, result.conflicts)  # fmt: skip
