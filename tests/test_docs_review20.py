"""Defects a review of the README and docs against the product found (review 20, docs): file modes of a signed
record and a permission error in `report verify`, summary.json for an internal failure, `medseg batch` redoing a
study for another organ set or model, pure JSON logs from `validate`, modes of batch SEGs, validate's data hint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from medseg.keys import keypair_paths, load_private_key, write_keypair
from medseg.validation.report import SIGNATURE
from medseg.validation.signing import sign_folder, signature_info, staged_file

REPO = Path(__file__).resolve().parents[1]
OTHER_UID = 65534


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The process umask 022 (the usual site default) for one test, then the one before."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder another account can enter (pytest's tmp_path lies under a 0700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="medseg-review20-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _signed_record(folder: Path, shared: Path, keys: Path) -> Path:
    """A small record (report.json, one real artifact) signed as `report sign` does: with a staged report.html
    renamed into place together with the envelope. Returns the public key."""
    (folder / "cases" / "c1").mkdir(parents=True)
    shutil.copyfile(shared / "ct/radcttace_0697/liver.nii.gz", folder / "cases/c1/liver.nii.gz")
    report = '{"acceptance": {"verdict": "fail"}, "model": {"name": "liver", "version": "1.0.0", '
    report += '"weights_sha256": "' + "ab" * 32 + '"}, "set": {"set_digest": "' + "cd" * 32 + '"}}\n'
    (folder / "report.json").write_text(report)
    private_path, public_path = keypair_paths(keys, "qa")
    write_keypair(private_path, public_path)
    private = load_private_key(private_path)
    html = staged_file(folder, "report.html")
    html.write_text("<html>signed</html>\n")
    sign_folder(folder, private, signature_info("A. Reviewer", "reviewed", private.public_key()), {"report.html": html})
    return public_path


def test_signed_files_get_the_umask_mode_like_the_rest_of_the_record(shared, tmp_path, umask_022) -> None:
    """Review 20 docs #1: report.html and signature.dsse.json were 0600 (mkstemp) beside a 0644 report.json."""
    _signed_record(tmp_path / "v", shared, tmp_path / "k")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "v").iterdir() if p.is_file()}
    assert modes == {"report.json": 0o644, "report.html": 0o644, SIGNATURE: 0o644}


def _verify_as_other_account(folder: Path, public: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """`medseg report verify` run by another uid (setpriv), with its own audit folder."""
    home.mkdir()
    home.chmod(0o777)
    env = os.environ | {"HOME": str(home), "MEDSEG_AUDIT_DIR": str(home / "audit")}
    cmd = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
           sys.executable, "-m", "medseg", "report", "verify", str(folder), "--public-key", str(public)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.parametrize("private", [SIGNATURE, "cases/c1/liver.nii.gz"])
def test_a_file_another_account_cannot_read_is_a_permission_error_not_tampering(
    shared, open_tmp, umask_022, private
) -> None:
    """Review 20 docs #1: the other account was told 'report NOT intact ... (damaged or edited)', exit 1. Now: it
    reads the whole record (exit 0), and a file it may not read is one line naming it, exit 4."""
    folder = open_tmp / "v"
    public = _signed_record(folder, shared, open_tmp / "k")
    (open_tmp / "k").chmod(0o755)
    assert _verify_as_other_account(folder, public, open_tmp / "h1").returncode == 0
    (folder / private).chmod(0o600)
    done = _verify_as_other_account(folder, public, open_tmp / "h2")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "NOT intact" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot read {folder / private}: permission denied" in lines[0], done.stderr


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from infer_fixtures import make_model_folder

    return make_model_folder(tmp_path_factory.mktemp("model"), seed=1, roi=(64, 64, 64), foreground_bias=1000.0)


def _slices(shared: Path, dst: Path, count: int = 30) -> Path:
    """Real CHAOS slices in a folder named `dicom`."""
    folder = dst / "dicom"
    folder.mkdir(parents=True)
    for f in sorted((shared / "ct/chaos_ct_sample/dicom").glob("*.dcm"))[30 : 30 + count]:
        shutil.copyfile(f, folder / f.name)
    return folder


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_an_internal_failure_of_a_case_writes_a_failed_summary(shared, tmp_path, small_model, capsys, monkeypatch,
                                                               debug) -> None:  # fmt: skip
    """Review 20 docs #2: a MemoryError (`ulimit -v`) left an empty --out, so monitoring never counted the case.
    Now summary.json records it (status failed, exit 4, one line); the CLI still reports the internal error (exit 4,
    one line; --debug adds the traceback)."""
    from cli_run import run_in_process

    import medseg.infer.pipeline as pipeline

    def out_of_memory(*_: object, **__: object) -> None:
        raise MemoryError("Unable to allocate 1.2 GiB for an array")

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(pipeline, "predict_labels", out_of_memory)
    src = _slices(shared, tmp_path / "in")
    argv = ["infer", str(src), "--model", str(small_model), "--out", str(tmp_path / "o")]
    code, _, err = run_in_process(["--debug", *argv] if debug else argv, capsys)
    assert code == 4, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "internal error: MemoryError: Unable to allocate 1.2 GiB" in last, err
    assert ("Traceback" in err) is debug
    assert sorted(p.name for p in (tmp_path / "o").rglob("*")) == ["dicom", "summary.json"]
    summary = json.loads((tmp_path / "o/dicom/summary.json").read_text())
    assert summary["status"] == "failed" and summary["exit_code"] == 4
    assert summary["failure"] == (f"{src}: internal error: MemoryError: Unable to allocate 1.2 GiB for an array. "
                                  "Rerun with --debug and report it")  # fmt: skip


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_a_thread_count_that_is_not_one_is_a_usage_error_before_any_work(shared, tmp_path, small_model, capsys,
                                                                         monkeypatch, value) -> None:  # fmt: skip
    """Review 20 docs #2: `MEDSEG_THREADS=two` failed the case after its model ran (internal error, exit 4)."""
    from cli_run import run_in_process

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDSEG_THREADS", value)
    src = _slices(shared, tmp_path / "in", 5)
    argv = ["infer", str(src), "--model", str(small_model), "--out", str(tmp_path / "o")]
    code, _, err = run_in_process(argv, capsys)
    assert code == 2, err
    assert err.strip().splitlines() == [
        f"error: MEDSEG_THREADS={value!r} is not a number of threads (a whole number, 1 or more). Set "
        "MEDSEG_THREADS=1 for one thread, or unset it to use the cores"
    ], err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def _abdomen_model(folder: Path, seed: int) -> Path:
    """A small 3-class model folder (liver, spleen; both validated) whose liver logit dominates, so every study is
    segmented (a random network finds no organ and the study would be refused)."""
    import torch
    import yaml

    from medseg.models.card import NetworkSpec
    from medseg.models.network import build_network
    from medseg.models.registry import sha256_file

    spec = NetworkSpec(out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    torch.manual_seed(seed)
    net = build_network(spec)
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
    with torch.no_grad():
        last.bias[1] += 1000.0
    folder.mkdir(parents=True)
    torch.save(net.state_dict(), folder / "weights.pt")
    card = {
        "name": "test-abdomen", "version": f"0.0.{seed}", "organ": "liver", "modality": "CT",
        "labels": {0: "background", 1: "liver", 2: "spleen"}, "intended_use": "tests only",
        "spacing": [3.0, 3.0, 3.0], "roi_size": [64, 64, 64], "network": spec.model_dump(mode="json"),
        "weights": {"file": "weights.pt", "sha256": sha256_file(folder / "weights.pt")},
        "metrics": {"locked_test_real_ct": {"mean_dice": 0.5}, "organs": {"spleen": {"mean_dice": 0.5}}},
    }  # fmt: skip
    (folder / "model_card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder


def test_the_queue_makes_a_new_job_for_a_study_done_with_other_organs_or_another_model(tmp_path) -> None:
    """Review 20 docs #3: `add_study` found the done job by UID and content alone."""
    from medseg.pacs.queue import JobQueue, Recipe

    model_a, model_b = ("m", "1", "a" * 64), ("m", "2", "b" * 64)
    queue = JobQueue(tmp_path / "queue.db")
    liver = Recipe(("liver",), model_a)
    job, how = queue.add_study("1.2.3", "d1", "/in/a", recipe=liver)
    lease = queue.lease("w", 60, job_id=job.id)
    assert how == "new" and lease is not None
    queue.set_identity(lease, "key1", "1.2.3.9", "1.2.3.10", "/r/1.dcm", model_a)
    queue.record_sent(lease, "folder", "key1", "1.2.3.10")
    assert queue.add_study("1.2.3", "d1", "/in/a", recipe=liver) == (queue.job(job.id), "done")
    assert queue.add_study("1.2.3", "d1", "/in/a") == (queue.job(job.id), "done")  # no recipe: as before
    both, how = queue.add_study("1.2.3", "d1", "/in/a", recipe=Recipe(("liver", "spleen"), model_a))
    assert how == "redone" and both.id != job.id and both.generation == 2 and both.state == "queued"
    assert queue.recipe(both.id) == Recipe(("liver", "spleen"), None)  # its model is kept when its SEG is made
    assert queue.add_study("1.2.3", "d1", "/in/a", recipe=Recipe(("spleen", "liver"), model_a))[1] == "open"
    assert queue.add_study("1.2.3", "d1", "/in/a", recipe=liver) == (queue.job(job.id), "done")
    assert queue.job(both.id).state == "superseded"  # the liver-only rerun does not make it with the liver alone
    other, how = queue.add_study("1.2.3", "d1", "/in/a", recipe=Recipe(("liver",), model_b))
    assert (other.id, how) == (both.id, "retried")  # the job not made is queued again, for what is asked now
    assert queue.recipe(both.id) == Recipe(("liver",), None) and queue.recipe(job.id) == liver


def _batch(shared_src: Path, out: Path, organs: str, model: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "medseg", "batch", str(shared_src), "--out", str(out), "--organ", organs,
           "--model", str(model)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=480, cwd=REPO)


def _seg_segments(out: Path) -> list[list[str]]:
    import pydicom

    segs = sorted((out / "seg").rglob("*.dcm"), key=lambda p: p.stat().st_mtime_ns)
    return [[s.SegmentLabel.lower() for s in pydicom.dcmread(p, stop_before_pixels=True).SegmentSequence] for p in segs]


def test_a_batch_rerun_with_more_organs_or_another_model_segments_again_and_keeps_the_earlier_result(
    shared, tmp_path, monkeypatch
) -> None:
    """Review 20 docs #3: `--organ liver`, then `--organ liver,spleen`, then another `--model`: each rerun said
    'segmented in an earlier run ... not run again' and the only SEG held the liver alone."""
    from pacs_helpers import chaos_files, make_study

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    model_a, model_b = _abdomen_model(tmp_path / "ma", 1), _abdomen_model(tmp_path / "mb", 2)
    make_study(chaos_files(shared), tmp_path / "in" / "a", range(28, 52), "review20-organs")
    out = tmp_path / "out"
    first = _batch(tmp_path / "in", out, "liver", model_a)
    assert first.returncode == 0 and first.stdout.startswith("1 sent"), first.stderr
    more = _batch(tmp_path / "in", out, "liver,spleen", model_a)
    assert more.returncode == 0 and more.stdout.startswith("1 sent, 0 quarantined, 0 failed of 1 studies\n"), more
    note = more.stderr.strip()
    assert "only with other organs or another model (job 1: liver by test-abdomen 0.0.1 (weights" in note
    assert "segmented again for liver, spleen by test-abdomen 0.0.1" in note and "not run again" not in note
    assert _seg_segments(out) == [["liver"], ["liver", "spleen"]]
    same = _batch(tmp_path / "in", out, "liver,spleen", model_a)
    assert same.returncode == 0 and "(1 done in an earlier run)" in same.stdout, same
    assert "segmented in an earlier run (job 2: liver, spleen by test-abdomen 0.0.1" in same.stderr
    other = _batch(tmp_path / "in", out, "liver", model_b)
    assert other.returncode == 0 and "segmented again for liver by test-abdomen 0.0.2" in other.stderr, other
    assert len(_seg_segments(out)) == 3
    with contextlib.closing(sqlite3.connect(out / "queue.db")) as db:
        assert [r[0] for r in db.execute("SELECT job_id FROM ledger ORDER BY job_id")] == [1, 2, 3]


CREATE_STORES = {
    "validate": "from medseg.validation.tracking import open_store; open_store(None, Path(sys.argv[1]) / 'out')",
    "train": "from medseg.train.tracking import Tracker; t = Tracker(Path(sys.argv[1]), None, 'e'); t.start('r'); "
    "t.end()",
}


@pytest.mark.parametrize("command", sorted(CREATE_STORES))
def test_creating_the_mlflow_store_prints_nothing_on_stderr(tmp_path, command) -> None:
    """Review 20 docs #4: `--log-json validate` got "INFO mlflow.store.db.utils: Creating initial MLflow database
    tables..." on stderr (MLflow's own logger, set to INFO by `import mlflow`); training's store the same. A fresh
    process, since MLflow configures its loggers on first import."""
    code = "import sys; from pathlib import Path; " + CREATE_STORES[command]
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert (tmp_path / "mlflow.db").is_file()


def test_batch_results_follow_the_umask_and_received_instances_stay_private(shared, tmp_path, monkeypatch,
                                                                           umask_022) -> None:  # fmt: skip
    """Review 20 docs #5: `medseg batch` wrote its SEGs 0600 beside a 0644 label map and summary.json of the same
    job. Received instances (the service's patient data) stay 0600."""
    from pacs_helpers import chaos_files, make_study

    from medseg.pacs.storage import durable_write, instance_path

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    make_study(chaos_files(shared), tmp_path / "in" / "a", range(28, 52), "review20-modes")
    out = tmp_path / "out"
    done = _batch(tmp_path / "in", out, "liver", _abdomen_model(tmp_path / "m", 1))
    assert done.returncode == 0, done.stderr
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*")
             if p.is_file() and not p.name.startswith("queue.db")}  # fmt: skip
    assert sum(name.startswith("seg/") for name in modes) == 1 and any(n.endswith("summary.json") for n in modes)
    assert set(modes.values()) == {0o644}, modes
    received = instance_path(tmp_path / "storage", "1.2.3", "1.2.3.4", "1.2.3.4.5")
    durable_write(received, b"DICM")
    assert received.stat().st_mode & 0o777 == 0o600


def test_validate_missing_data_hint_names_only_what_validate_has(tmp_path, capsys, monkeypatch) -> None:
    """Review 20 docs #6: the hint said 'Check --data-root', an option `medseg validate` does not have."""
    from cli_run import run_in_process

    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    code, _, err = run_in_process(["validate", "--set", "liver_real_manual_v2", "--out", str(tmp_path / "v")], capsys)
    assert code == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "data file missing" in lines[0] and str(tmp_path / "empty") in lines[0], err
    assert "Check MEDSEG_DATA_ROOT (for `medseg train`: --data-root)" in lines[0] and "Check --data-root" not in err
