"""Defects of the nineteenth review of `medseg validate` / `report sign|verify`, each on small real inputs: where
criteria and set files came from, training data the independence check could not compare, label grids, atomic
signing and output folders, MLflow failures, traceability of skipped tests, the source digest's scope, the signature
envelope, the bootstrap level and the risk record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medseg.validation.acceptance import ACCEPTANCE_DIR
from medseg.validation.records import release_supported
from medseg.validation.sets import SETS_DIR, file_origin


def _record(criteria: dict[str, Any], set_file: dict[str, Any]) -> dict[str, Any]:
    """The parts of a report.json that release_supported reads, with every other reason absent."""
    return {
        "acceptance_file": criteria,
        "set": {"name": "liver_real_manual_v2", "file": set_file},
        "acceptance": {"verdict": "pass", "criteria": []},
        "traceability": {"complete": True, "gaps": [], "junit": {"failed": 0}},
        "risk": {"residual_not_acceptable": []},
    }


def test_criteria_typed_as_the_projects_path_in_another_folder_are_not_the_projects(tmp_path, monkeypatch) -> None:
    """A lax liver_v1.yaml in ./validation/acceptance/ of the current folder was recorded as
    'validation/acceptance/liver_v1.yaml' and counted as the project's pre-specified criteria."""
    (tmp_path / "validation" / "acceptance").mkdir(parents=True)
    lax = tmp_path / "validation" / "acceptance" / "liver_v1.yaml"
    lax.write_text((ACCEPTANCE_DIR / "liver_v1.yaml").read_text().replace("0.90", "0.10"))
    monkeypatch.chdir(tmp_path)
    typed = Path("validation/acceptance/liver_v1.yaml")
    origin = file_origin(typed, ACCEPTANCE_DIR)
    assert origin == {"path": str(lax.resolve()), "in_project": False}
    shipped_set = file_origin(SETS_DIR / "liver_real_manual_v2.yaml", SETS_DIR)
    assert shipped_set == {"path": "validation/sets/liver_real_manual_v2.yaml", "in_project": True}
    supported, reasons = release_supported(_record(origin, shipped_set))
    assert not supported and any("not the project's pre-specified criteria" in r for r in reasons), reasons
    real = file_origin(ACCEPTANCE_DIR / ".." / "acceptance" / "liver_v1.yaml", ACCEPTANCE_DIR)
    assert real == {"path": "validation/acceptance/liver_v1.yaml", "in_project": True}
    assert release_supported(_record(real, shipped_set)) == (True, [])


def test_a_set_file_outside_validation_sets_with_a_shipped_sets_name_does_not_support_release(tmp_path) -> None:
    """A set file elsewhere named liver_real_manual_v2 (another scan) gave a record that read as the shipped set's."""
    impostor = tmp_path / "liver_real_manual_v2.yaml"
    impostor.write_text((SETS_DIR / "liver_real_manual_v2.yaml").read_text())
    origin = file_origin(impostor, SETS_DIR)
    assert origin == {"path": str(impostor.resolve()), "in_project": False}
    criteria = file_origin(ACCEPTANCE_DIR / "liver_v1.yaml", ACCEPTANCE_DIR)
    supported, reasons = release_supported(_record(criteria, origin))
    assert not supported and reasons == [
        f"test set liver_real_manual_v2 was read from {impostor.resolve()}, not from the project's locked sets "
        "(validation/sets/)"
    ]
    old_record = _record(criteria, origin)
    del old_record["set"]["file"]
    assert not release_supported(old_record)[0]


def _test_data_only(tmp_path: Path, shared: Path) -> Path:
    """A data root holding the shipped v2 set's case (RadCTTACEomics 0697) and none of the training data."""
    root = tmp_path / "root"
    (root / "ct").mkdir(parents=True)
    (root / "ct" / "radcttace_0697").symlink_to(shared / "ct" / "radcttace_0697")
    return root


def test_training_cts_missing_from_the_data_root_leave_independence_unproven(shared, tmp_path) -> None:
    """With only the test data present the voxel comparison skipped every training CT and said independent: true."""
    from medseg.errors import InvalidInputError
    from medseg.models.registry import resolve_model
    from medseg.validation.independence import check_independence, require_independence
    from medseg.validation.sets import load_set

    root = _test_data_only(tmp_path, shared)
    ts = load_set(SETS_DIR / "liver_real_manual_v2.yaml")
    result = check_independence(ts, resolve_model(None, "liver").card, root)
    assert result.conflicts == [] and len(result.uncompared_training) == 4
    record = result.to_json()
    assert record["independent"] is False and record["uncompared_training_cts"] == 4
    with pytest.raises(InvalidInputError) as exc:
        require_independence(result, ts.name)
    assert exc.value.exit_code == 3
    assert "4 training CT(s)" in str(exc.value) and str(root) in str(exc.value)
    assert "MEDSEG_DATA_ROOT" in str(exc.value.hint) and "--allow-unverified-independence" in str(exc.value.hint)
    require_independence(result, ts.name, allow_unverified=True)
    criteria = file_origin(ACCEPTANCE_DIR / "liver_v1.yaml", ACCEPTANCE_DIR)
    report = _record(criteria, file_origin(SETS_DIR / "liver_real_manual_v2.yaml", SETS_DIR))
    report["independence"] = record
    supported, reasons = release_supported(report)
    assert not supported and reasons[0].startswith("independence unproven: 4 training CT(s)")
    full = check_independence(ts, resolve_model(None, "liver").card, shared).to_json()
    assert full["independent"] is True and full["uncompared_training_cts"] == 0


def test_validate_refuses_in_one_line_when_training_data_is_not_under_the_data_root(
    shared, tmp_path, monkeypatch, capsys
) -> None:
    from cli_run import run_cli

    root = _test_data_only(tmp_path, shared)
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(root))
    out = tmp_path / "val"
    code, text = run_cli(["validate", "--set", "liver_real_manual_v2", "--out", str(out)], capsys)
    assert code == 3, text
    assert "independence of test set liver_real_manual_v2 is unproven: 4 training CT(s)" in text
    assert "Traceback" not in text and not out.exists()


@pytest.fixture(scope="module")
def relabelled(shared, tmp_path_factory) -> Path:
    """The real manual label of RadCTTACEomics 0697 stored three ways: as it is, with its first axis flipped (the
    affine updated: the same anatomy) and with its origin moved 50 mm (the same voxels 5 cm off the image)."""
    import nibabel as nib
    import numpy as np

    root = tmp_path_factory.mktemp("labels")
    src = nib.load(shared / "ct/radcttace_0697/liver.nii.gz")
    data, aff = np.asarray(src.dataobj), src.affine
    nib.save(src, root / "as_is.nii.gz")
    nib.save(src.as_reoriented(np.array([[0, -1], [1, 1], [2, 1]])), root / "flipped.nii.gz")
    shifted = aff.copy()
    shifted[:3, 3] += [50, 0, 0]
    nib.save(nib.Nifti1Image(data, shifted, src.header), root / "shifted.nii.gz")
    return root


def _label_case(label: str):
    from medseg.validation.sets import SetCase

    return SetCase(case_id="c697", patient="p", image="x", label=label, sha256={"image": "0", "label": "0"},
                   source="s", licence="l", label_type="manual")  # fmt: skip


def test_a_label_stored_flipped_is_scored_in_its_physical_place(relabelled) -> None:
    """A flipped label with the matching affine (the same anatomy) scored Dice 0.014: arrays were compared raw."""
    from medseg.validation.run import score_case

    as_is = score_case(_label_case("flipped.nii.gz"), relabelled, relabelled / "as_is.nii.gz", "liver", 1, 3.0)
    assert as_is["liver"]["dice"] == pytest.approx(1.0)


def test_a_label_off_the_images_grid_is_refused_naming_the_file(relabelled) -> None:
    """A label whose origin is 50 mm off was scored as if aligned."""
    from medseg.errors import InvalidInputError
    from medseg.validation.run import score_case

    with pytest.raises(InvalidInputError) as exc:
        score_case(_label_case("shifted.nii.gz"), relabelled, relabelled / "as_is.nii.gz", "liver", 1, 3.0)
    assert exc.value.exit_code == 3 and exc.value.path == relabelled / "shifted.nii.gz"
    assert "not on the image's grid" in str(exc.value) and "50.00 mm apart" in str(exc.value)


def small_record(folder: Path, shared: Path, audited_as_validate: bool = True) -> dict[str, Any]:
    """A complete validation folder without running the model: the shipped v2 set's one case, scored with its own
    manual label as the prediction through the real scorer, analysis, acceptance, records, report and HTML; its
    report.json recorded as a `validate` output in the audit trail (so `report sign` accepts it)."""
    import shutil

    from medseg.validation.acceptance import acceptance_path, evaluate, load_acceptance
    from medseg.validation.analysis import aggregates, subgroups
    from medseg.validation.html import write_html
    from medseg.validation.records import attach_records
    from medseg.validation.report import write_report
    from medseg.validation.run import environment, score_case
    from medseg.validation.sets import load_set

    case = load_set(SETS_DIR / "liver_real_manual_v2.yaml").cases[0]
    (folder / "cases" / case.case_id).mkdir(parents=True)
    prediction = folder / "cases" / case.case_id / "liver.nii.gz"
    shutil.copyfile(shared / case.label, prediction)
    row = {"case_id": case.case_id, "patient": case.patient, "source": case.source, "label_type": case.label_type,
           "notes": case.notes, "acquisition": case.acquisition.model_dump(),
           "inference": {"status": "ok", "message": "", "qc_flags": []},
           "metrics": score_case(case, shared, prediction, "liver", 1, 3.0)}  # fmt: skip
    acc_path = acceptance_path("liver_v1")
    acc, acc_sha = load_acceptance(acc_path)
    boot = acc.bootstrap
    aggs = aggregates([row], "liver", boot.seed, boot.resamples)
    groups = subgroups([row], "liver", acc.subgroups, boot.seed, boot.resamples)
    report = {
        "schema": "medseg-validation-report/1",
        "model": {"name": "liver", "version": "1.0.0", "organ": "liver", "weights_sha256": "ab" * 32,
                  "card_sha256": "cd" * 32, "runtime": {"backend": "none (label as prediction)"}},
        "set": {"name": "liver_real_manual_v2", "description": "v2", "set_digest": "ef" * 32, "cases": 1,
                "patients": 1, "file": file_origin(SETS_DIR / "liver_real_manual_v2.yaml", SETS_DIR)},
        "independence": {"independent": True, "manifests": [], "training_cases": 0, "test_cases": 1,
                         "uncompared_training_cts": 0},
        "acceptance_file": file_origin(acc_path, ACCEPTANCE_DIR) | {"sha256": acc_sha, "version": acc.version},
        "nsd_tolerance_mm": acc.nsd_tolerance_mm,
        "bootstrap": boot.model_dump() | {"resampling_unit": "patient"},
        "cases": [row], "aggregates": aggs, "subgroups": groups, "acceptance": evaluate(acc, aggs, groups),
        "environment": environment(),
    }  # fmt: skip
    record = attach_records(report, folder, None)
    supported, reasons = release_supported(record)
    final = write_report(folder, record | {"release": {"supported": supported, "reasons": reasons}})
    write_html(folder, final)
    if audited_as_validate:
        from medseg.cli.audited import audited

        with audited("validate", {}) as rec:
            rec.add_outputs([folder / "report.json"])
    return final


@pytest.fixture
def sign_keys(tmp_path) -> tuple[Path, Path]:
    from medseg.keys import keypair_paths, write_keypair

    write_keypair(*keypair_paths(tmp_path / "k", "qa"))
    write_keypair(*keypair_paths(tmp_path / "k", "other"))
    return keypair_paths(tmp_path / "k", "qa")[0], keypair_paths(tmp_path / "k", "other")[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_pdf_leaves_the_record_exactly_as_it_was(shared, tmp_path, sign_keys, monkeypatch, capsys) -> None:
    """`report sign --pdf` without Chromium exited 2 but had already rewritten report.html with a signature block
    for a signature that was never written."""
    from cli_run import run_cli

    folder = tmp_path / "rec"
    small_record(folder, shared)
    before = _snapshot(folder)
    monkeypatch.setenv("PATH", str(tmp_path / "no-browser-here"))
    args = ["report", "sign", str(folder), "--key", str(sign_keys[0]), "--signer", "A. Reviewer"]
    code, out = run_cli([*args, "--meaning", "reviewed", "--pdf"], capsys)
    assert code == 2 and "no Chromium found" in out, out
    assert _snapshot(folder) == before


def test_ctrl_c_while_the_pdf_prints_leaves_the_record_as_it_was_and_it_can_be_signed_after(
    shared, tmp_path, sign_keys, monkeypatch, capsys
) -> None:
    """A Ctrl-C during printing left report.html naming a signer, with no signature. The 'browser' here is a
    program on PATH that sends Ctrl-C (SIGINT) to the signing process while it waits for the print."""
    import os
    import signal

    from cli_run import run_cli

    folder = tmp_path / "rec"
    small_record(folder, shared)
    before = _snapshot(folder)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chromium").write_text(f"#!/bin/sh\nkill -{signal.SIGINT.value} {os.getpid()}\nsleep 5\n")
    (bin_dir / "chromium").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    args = ["report", "sign", str(folder), "--key", str(sign_keys[0]), "--signer", "A. Reviewer"]
    code, out = run_cli([*args, "--meaning", "reviewed", "--pdf"], capsys)
    assert code == 130, out
    assert _snapshot(folder) == before
    (folder / ".tmp-report.html-left-by-kill-9.html").write_text("<p>Signed by A. Reviewer</p>")
    code, out = run_cli([*args, "--meaning", "reviewed"], capsys)
    assert code == 0, out
    assert "A. Reviewer" in (folder / "report.html").read_text()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def _validate_cmd(out: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "medseg", "validate", "--set", "liver_real_manual_v2", "--out", str(out)]


def _cli_env(tmp_path: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {"MEDSEG_AUDIT_DIR": str(tmp_path / "audit"), "MEDSEG_CACHE_DIR": str(tmp_path / "cache")}


def _stop_during_inference(tmp_path: Path, out: Path, sig: int) -> int:
    """Start `medseg validate`, send `sig` once the first case's outputs are written, return its exit code."""
    import subprocess
    import time

    proc = subprocess.Popen(_validate_cmd(out), env=_cli_env(tmp_path), cwd=Path(__file__).parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if any(out.parent.glob(f".tmp-{out.name}-*/cases/*/summary.json")) or (out / "cases").exists():
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    return proc.wait(timeout=120)


@pytest.mark.slow
def test_an_interrupted_or_killed_validation_leaves_no_output_folder_and_the_rerun_succeeds(shared, tmp_path) -> None:
    """Ctrl-C, SIGTERM or kill -9 during inference left a half-written --out that refused the rerun ('not empty')."""
    import signal
    import subprocess

    out = tmp_path / "val"
    assert _stop_during_inference(tmp_path, out, signal.SIGINT) == 130
    assert not out.exists() and list(tmp_path.glob(".tmp-val-*")) == []
    assert _stop_during_inference(tmp_path, out, signal.SIGKILL) == -signal.SIGKILL
    assert not out.exists()
    done = subprocess.run(_validate_cmd(out), env=_cli_env(tmp_path), cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stderr  # the record does not support release (no --junit), and is written
    assert (out / "report.json").is_file() and (out / "report.html").is_file()


def test_an_unwritable_or_unreachable_tracking_store_fails_before_inference(shared, tmp_path, capsys) -> None:
    """A store that cannot be created, or a server that is down, failed only after every case was segmented (an
    http server after minutes of retries), leaving a half-written --out."""
    import time

    from cli_run import run_cli

    (tmp_path / "afile").write_text("x")
    for uri in (f"sqlite:///{tmp_path}/afile/sub/mlflow.db", "http://127.0.0.1:9"):
        out = tmp_path / "val"
        start = time.monotonic()
        code, text = run_cli(["validate", "--set", "liver_real_manual_v2", "--out", str(out), "--tracking-uri", uri],
                             capsys)  # fmt: skip
        assert code == 4 and f"cannot open the MLflow store at {uri}" in text, text
        assert "radcttace_0697:" not in text and "Traceback" not in text  # no case was segmented
        assert time.monotonic() - start < 90  # MLflow's HTTP retries take minutes; a loaded 2-core CI took 31 s
        assert not out.exists() and list(tmp_path.glob(".tmp-val-*")) == []


def test_a_store_whose_creation_failed_is_removed_and_the_next_one_opens(tmp_path) -> None:
    """A file-size limit (disk full) while MLflow created its sqlite store left a broken mlflow.db that failed every
    later validation beside it."""
    import subprocess
    import sys

    script = (
        "import resource, sys; from pathlib import Path; resource.setrlimit(resource.RLIMIT_FSIZE, (40000, 40000))\n"
        "from medseg.validation.tracking import open_store\n"
        "try: open_store(None, Path(sys.argv[1]))\n"
        "except Exception as exc: print(type(exc).__name__, exc); sys.exit(4)\n"
    )  # fmt: skip
    out = tmp_path / "val"
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 4 and "cannot open the MLflow store" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "mlflow.db").exists()
    from medseg.validation.tracking import open_store

    assert open_store(None, out) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_run_whose_files_cannot_be_logged_is_marked_failed(shared, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from medseg.errors import ProcessingError
    from medseg.validation.tracking import finish_run, open_store, start_run

    out = tmp_path / "val"
    report = small_record(out, shared, audited_as_validate=False)
    uri = open_store(None, out)
    info = start_run(report, out, uri)
    artifacts = Path(MlflowClient(uri).get_run(info["run_id"]).info.artifact_uri.removeprefix("file://"))
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_text("a file where the run's artifact folder goes")
    with pytest.raises(ProcessingError, match="cannot log the validation files"):
        finish_run(info, out, "inconclusive")
    assert MlflowClient(uri).get_run(info["run_id"]).info.status == "FAILED"


SKIPPING_SAMPLE = """
import pytest

def test_ok():
    pass

def test_other_ok():
    pass

@pytest.mark.skip(reason="needs dciodvfy")
def test_skipped():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfailed():
    assert False
"""


def test_a_requirement_whose_named_test_was_skipped_or_xfailed_is_not_verified(tmp_path) -> None:
    """REQ-001 passed with one of its three named tests skipped, REQ-003 with one xfailed, because another passed."""
    import subprocess
    import sys

    from medseg.validation.traceability import _status, read_junit

    (tmp_path / "test_sample.py").write_text(SKIPPING_SAMPLE)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                    f"--junitxml={tmp_path / 'junit.xml'}", "test_sample.py"],
                   cwd=tmp_path, capture_output=True, timeout=120, check=True)  # fmt: skip
    results = read_junit(tmp_path / "junit.xml")
    assert {t.node.split("::")[-1]: t.outcome for t in results} == {
        "test_ok": "passed", "test_other_ok": "passed", "test_skipped": "skipped", "test_xfailed": "xfailed"
    }  # fmt: skip
    for bad in ("test_skipped", "test_xfailed"):
        named = ["test_sample.py::test_ok", f"test_sample.py::{bad}"]
        tests = [t for t in results if t.node in named]
        status, problems = _status(tests, named, [], {})
        assert status == "fail" and problems == [f"named test test_sample.py::{bad} was {bad.removeprefix('test_')}"]
    named = ["test_sample.py::test_ok", "test_sample.py::test_other_ok"]
    assert _status([t for t in results if t.node in named], named, [], {}) == ("pass", [])
    # linked by the req marker only (no names): a skipped or xfailed result is a gap too (re-probe)
    for bad in ("test_skipped", "test_xfailed"):
        linked = [t for t in results if t.node.endswith(("::test_ok", f"::{bad}"))]
        status, problems = _status(linked, [], [], {})
        assert status == "fail" and problems == [f"test test_sample.py::{bad} was {bad.removeprefix('test_')}"]


def _mini_repo(root: Path) -> Path:
    files = {
        "medseg/validation/run.py": "x = 1\n",
        "medseg/validation/templates/report.html.j2": "<p>{{ r }}</p>\n",
        "medseg/infer/organs.json": "{}\n",
        "medseg/models/zoo/liver/model_card.yaml": "weights: {sha256: ab}\n",
        "medseg/models/zoo/liver/weights.pt": "weights",
        "medseg/models/zoo/liver/int8/model.bin": "int8",
        "medseg/validation/__pycache__/run.cpython-312.pyc": "compiled",
        "tests/test_x.py": "def test_x(): pass\n",
        "tests/data/fixture.csv": "a,b\n",
        "requirements.lock": "numpy==2.0\n",
        "pyproject.toml": "[project]\n",
        "docs/notes.md": "not code\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_source_digest_covers_templates_data_tests_and_the_lock_and_only_content(tmp_path) -> None:
    """Only *.py and *.yaml counted: a JUnit file of an older commit still matched after a template, a JSON table or
    requirements.lock changed."""
    import os
    import shutil

    from medseg.validation.traceability import source_digest, source_files

    repo = _mini_repo(tmp_path / "a")
    assert [p.relative_to(repo).as_posix() for p in source_files(repo)] == [
        "medseg/infer/organs.json", "medseg/models/zoo/liver/model_card.yaml", "medseg/validation/run.py",
        "medseg/validation/templates/report.html.j2", "pyproject.toml", "requirements.lock", "tests/data/fixture.csv",
        "tests/test_x.py",
    ]  # fmt: skip
    clone = tmp_path / "b"
    shutil.copytree(repo, clone)
    for path in clone.rglob("*"):
        os.utime(path, (1, 1))
    base = source_digest(repo)
    assert source_digest(clone) == base  # content and paths only: a fresh clone, other times, same digest
    for rel in ("medseg/models/zoo/liver/weights.pt", "medseg/validation/__pycache__/run.cpython-312.pyc",
                "docs/notes.md"):  # fmt: skip
        (clone / rel).write_text("changed")
    assert source_digest(clone) == base
    for rel in ("medseg/validation/templates/report.html.j2", "medseg/infer/organs.json", "requirements.lock",
                "pyproject.toml", "tests/data/fixture.csv"):  # fmt: skip
        before = source_digest(clone)
        (clone / rel).write_text((clone / rel).read_text() + " ")
        assert source_digest(clone) != before, rel


def _edit_envelope(path: Path, change: str) -> None:
    import json

    env = json.loads(path.read_text())
    if change == "keyid edited":
        env["signatures"][0]["keyid"] = "deadbeefdeadbeef"
    elif change == "keyid removed":
        del env["signatures"][0]["keyid"]
    elif change == "second signature entry":
        env["signatures"].append({"keyid": "x", "sig": "AAAA"})
    elif change == "extra field":
        env["comment"] = "approved by the board"
    if change == "whitespace added":
        path.write_text(path.read_text().replace("{", "{ ", 1))
    elif change == "re-serialised":
        path.write_text(json.dumps(env))
    else:
        path.write_text(json.dumps(env, indent=1) + "\n")


ENVELOPE_EDITS = ["keyid edited", "keyid removed", "second signature entry", "extra field", "whitespace added",
                  "re-serialised"]  # fmt: skip


@pytest.fixture(scope="module")
def signed_small(shared, tmp_path_factory) -> tuple[Path, Path]:
    """A small real record signed by `sign_folder`, and the signer's public key."""
    from medseg.keys import keypair_paths, load_private_key, write_keypair
    from medseg.validation.signing import sign_folder, signature_info

    base = tmp_path_factory.mktemp("signed19")
    write_keypair(*keypair_paths(base / "k", "qa"))
    private = load_private_key(keypair_paths(base / "k", "qa")[0])
    small_record(base / "rec", shared, audited_as_validate=False)
    sign_folder(base / "rec", private, signature_info("A. Reviewer", "reviewed", private.public_key()))
    return base / "rec", keypair_paths(base / "k", "qa")[1]


@pytest.mark.parametrize("change", ENVELOPE_EDITS)
def test_an_envelope_not_exactly_as_signed_fails_verification(signed_small, tmp_path, change) -> None:
    """An edited or removed keyid, a garbage second signature entry and added whitespace all verified as intact."""
    import shutil

    from medseg.keys import load_public_key
    from medseg.validation.report import SIGNATURE
    from medseg.validation.signing import verify_folder

    folder = tmp_path / "rec"
    shutil.copytree(signed_small[0], folder)
    public = load_public_key(signed_small[1])
    assert verify_folder(folder, public).ok
    _edit_envelope(folder / SIGNATURE, change)
    result = verify_folder(folder, public)
    assert not result.ok and len(result.problems) == 1, result.problems
    assert SIGNATURE in result.problems[0] or "signature does not verify" in result.problems[0]


def test_verify_of_a_deleted_signature_exits_1_and_of_a_missing_folder_exits_3(signed_small, tmp_path, capsys) -> None:
    """A deleted signature exited 3 (a user's mistake) instead of 1 (tampering); a folder that does not exist said
    'not signed'."""
    import shutil

    from cli_run import run_cli

    from medseg.validation.report import SIGNATURE

    folder = tmp_path / "rec"
    shutil.copytree(signed_small[0], folder)
    (folder / SIGNATURE).unlink()
    code, out = run_cli(["report", "verify", str(folder), "--public-key", str(signed_small[1])], capsys)
    assert code == 1 and f"{SIGNATURE}: missing" in out, out
    code, out = run_cli(["report", "verify", str(tmp_path / "nope"), "--public-key", str(signed_small[1])], capsys)
    assert code == 3 and "no such report folder" in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1


def test_the_bootstrap_level_of_the_criteria_file_sets_every_interval_and_its_label(shared, tmp_path) -> None:
    """bootstrap.level was recorded but ignored: a file pre-specifying a 50 % interval got 95 % bounds, and the
    report said '95% CI' whatever the level."""
    from medseg.validation.analysis import METRICS, aggregates, subgroups
    from medseg.validation.html import render

    rows = [{"patient": f"p{i}", "acquisition": {"manufacturer": "GE"},
             "metrics": {"liver": {m: 0.80 + 0.03 * i for m in METRICS} | {"volume_diff_pct": 1.0 + i}}}
            for i in range(5)]  # fmt: skip
    wide = aggregates(rows, "liver", 7, 2000, 0.95)["dice"]
    narrow = aggregates(rows, "liver", 7, 2000, 0.50)["dice"]
    assert narrow["ci_level"] == 0.5 and wide["ci_level"] == 0.95
    assert wide["ci_low"] < narrow["ci_low"] <= narrow["mean"] <= narrow["ci_high"] < wide["ci_high"]
    group = subgroups(rows, "liver", ["manufacturer"], 7, 2000, 0.50)[0]
    assert (group["ci_low"], group["ci_high"], group["ci_level"]) == (narrow["ci_low"], narrow["ci_high"], 0.5)
    report = small_record(tmp_path / "rec", shared, audited_as_validate=False)
    report["bootstrap"]["level"] = 0.5
    page = render(report)
    assert "50% CI" in page and "95% CI" not in page


def _with_ac06(report: dict[str, Any], verdict: str) -> dict[str, Any]:
    criteria = [c | {"verdict": verdict} if c["id"] == "AC-06" else c for c in report["acceptance"]["criteria"]]
    return report | {"acceptance": report["acceptance"] | {"criteria": criteria}}


def test_risk_json_carries_this_runs_results_and_marks_a_narrative_the_run_contradicts(shared, tmp_path) -> None:
    """risk.json was hazards.yaml copied: byte-identical for a failed and a passed validation, and its HAZ-003 text
    said 'AC-06 fails' in a record whose AC-06 passed."""
    import json

    from medseg.validation.records import attach_records

    report = small_record(tmp_path / "rec", shared, audited_as_validate=False)
    risks = {}
    for verdict in ("fail", "pass"):
        out = tmp_path / verdict
        out.mkdir()
        record = attach_records(_with_ac06(report, verdict), out, None)
        risks[verdict] = {h["id"]: h for h in json.loads((out / "risk.json").read_text())}
        assert record["risk"]["narrative_contradicted_by_run"] == ([] if verdict == "fail" else ["HAZ-003"])
    failed, passed = risks["fail"]["HAZ-003"]["run"], risks["pass"]["HAZ-003"]["run"]
    assert failed["criteria"]["AC-06"] == "fail" and passed["criteria"]["AC-06"] == "pass"
    assert failed["narrative_states"] == {"AC-06": "fail"} and failed["narrative_matches_run"] is True
    assert passed["narrative_matches_run"] is False and passed["narrative_contradicted"] == ["AC-06"]
    assert failed["verified"] is None  # no --junit: no verification result in this record
    assert risks["fail"]["HAZ-003"]["benefit_risk"] == risks["pass"]["HAZ-003"]["benefit_risk"]  # the text is kept


def test_risk_json_states_each_hazards_verification_in_this_test_run(shared, tmp_path) -> None:
    import json
    import subprocess
    import sys

    from medseg.validation.records import attach_records

    junit = tmp_path / "junit.xml"
    node = "tests/test_validation_trace.py::test_the_project_risk_records_are_consistent"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", node],
                   cwd=Path(__file__).parents[1], capture_output=True, timeout=300, check=True)  # fmt: skip
    report = small_record(tmp_path / "rec", shared, audited_as_validate=False)
    out = tmp_path / "out"
    out.mkdir()
    attach_records(report, out, junit)
    risk = json.loads((out / "risk.json").read_text())
    assert all(h["run"]["verified"] is False and h["run"]["verification_problems"] for h in risk)
    assert any("did not pass in this run" in p for p in risk[0]["run"]["verification_problems"])


def test_a_record_given_by_a_relative_path_is_signed_and_verified(shared, tmp_path, sign_keys, monkeypatch,
                                                                   capsys) -> None:  # fmt: skip
    """The README's own example signs `outputs/val/...`, a relative path: it failed with an internal error (the
    staged page's absolute path was taken relative to the relative folder)."""
    from cli_run import run_cli

    small_record(tmp_path / "rec", shared)
    monkeypatch.chdir(tmp_path)
    args = ["report", "sign", "rec", "--key", str(sign_keys[0]), "--signer", "A. Reviewer", "--meaning", "reviewed"]
    code, out = run_cli(args, capsys)
    assert code == 0, out
    code, out = run_cli(["report", "verify", "rec", "--public-key", str(sign_keys[0]) + ".pub"], capsys)
    assert code == 0 and "report intact" in out, out
    # what was signed says whether the record supports release, and verify says it too (re-probe)
    import base64

    release = json.loads((tmp_path / "rec" / "report.json").read_text())["release"]
    envelope = json.loads((tmp_path / "rec" / "signature.dsse.json").read_text())
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert (predicate["release_supported"], predicate["release_reasons"]) == (release["supported"], release["reasons"])
    assert not release["supported"] and "release NOT supported" in out
    assert all(f"release not supported: {r}" in out for r in release["reasons"])
