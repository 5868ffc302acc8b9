"""`medseg batch` on real CT slices: studies keyed by identity and content (not folder name), inputs stored resolved,
reruns that retry what failed or changed, a resumed job redone by the model of the rerun, clear write errors, and
Ctrl-C / SIGTERM that hand the running job back."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from infer_fixtures import make_model_folder
from mounts import bind_read_only
from pacs_helpers import chaos_files, make_study

from medseg.cli.main import main
from medseg.models.registry import resolve_model
from medseg.pacs.queue import JobQueue
from medseg.pacs.worker import CRASH_ENV, seg_key

SLICES = range(28, 52)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return tuple(make_model_folder(root / f"m{s}", seed=s, roi=(64, 64, 64), foreground_bias=1000.0) for s in (1, 2))


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))

    def invoke(*args: object) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(["batch", *[str(a) for a in args]])
        out, err = capsys.readouterr()
        return int(exc.value.code or 0), out, err

    return invoke


def _cli(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "medseg", "batch", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env={**os.environ, **(env or {})})


def _segs(out: Path) -> list[Path]:
    return sorted((out / "seg").rglob("*.dcm"))


def _study(shared: Path, dst: Path, seed: str) -> str:
    return make_study(chaos_files(shared), dst, SLICES, seed)[0]


def test_new_studies_under_used_folder_names_are_segmented_and_a_known_study_is_said_done(
    shared, tmp_path, models, run
):
    week1 = {_study(shared, tmp_path / "week1" / n, f"w1-{n}") for n in ("a", "b")}
    week2 = {_study(shared, tmp_path / "week2" / n, f"w2-{n}") for n in ("a", "b")}
    out = tmp_path / "out"
    code, stdout, err = run(tmp_path / "week1", "--out", out, "--model", models[0])
    assert code == 0, err
    code, stdout, err = run(tmp_path / "week2", "--out", out, "--model", models[0])
    assert code == 0, err
    assert stdout.startswith("2 sent, 0 quarantined, 0 failed of 2 studies"), stdout
    assert {pydicom.dcmread(p).StudyInstanceUID for p in _segs(out)} == week1 | week2
    (tmp_path / "week3").mkdir()
    os.rename(tmp_path / "week1" / "a", tmp_path / "week3" / "renamed")  # the same study under another name
    _study(shared, tmp_path / "week3" / "b", "w3-b")
    code, stdout, err = run(tmp_path / "week3", "--out", out, "--model", models[0])
    assert code == 0, err
    assert stdout.startswith("2 sent, 0 quarantined, 0 failed of 2 studies (1 done in an earlier run)"), stdout
    uid = pydicom.dcmread(next((tmp_path / "week3" / "renamed").iterdir())).StudyInstanceUID
    (first,) = [j.id for j in JobQueue(out / "queue.db").jobs(study_uid=uid)]
    assert f"study renamed: segmented in an earlier run (job {first}: liver by " in err
    assert len(_segs(out)) == 5
    assert len(JobQueue(out / "queue.db").jobs()) == 5


def test_a_run_killed_then_resumed_from_another_directory_finishes_every_study(shared, tmp_path, models):
    for n in ("a", "b"):
        _study(shared, tmp_path / "work" / "studies" / n, f"cwd-{n}")
    killed = _cli("studies", "--out", "res", "--model", models[0], cwd=tmp_path / "work",
                  env={CRASH_ENV: "after_inference"})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    jobs = JobQueue(tmp_path / "work" / "res" / "queue.db").jobs()
    assert len(jobs) == 2 and all(Path(j.input).is_absolute() for j in jobs), [j.input for j in jobs]
    (tmp_path / "other").mkdir()
    resumed = _cli(tmp_path / "work" / "studies", "--out", tmp_path / "work" / "res", "--model", models[0],
                   cwd=tmp_path / "other")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("2 sent, 0 quarantined, 0 failed of 2 studies"), resumed.stdout
    assert len(_segs(tmp_path / "work" / "res")) == 2


def test_a_rerun_retries_failed_jobs_and_quarantined_studies_that_changed_but_not_those_that_did_not(
    shared, tmp_path, models, run, read_only
):
    studies, out = tmp_path / "in", tmp_path / "out"
    _study(shared, studies / "good", "retry-good")
    _study(shared, studies / "bad", "retry-bad")
    victim = sorted((studies / "bad").iterdir())[10]
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])
    read_only(out / "seg")  # every SEG write fails: the job fails after its attempts
    code, stdout, err = run(studies, "--out", out, "--model", models[0])
    assert code == 4 and stdout.startswith("0 sent, 1 quarantined, 1 failed of 2 studies"), (stdout, err)
    jobs = {Path(j.input).name: j for j in JobQueue(out / "queue.db").jobs()}
    assert jobs["good"].state == "failed" and str(out / "seg") in (jobs["good"].reason or "")
    assert jobs["bad"].state == "quarantined"
    assert "Read-only file system" in (jobs["good"].reason or "")
    read_only.release(out / "seg")
    code, stdout, err = run(studies, "--out", out, "--model", models[0])
    assert code == 4 and stdout.startswith("1 sent, 1 quarantined, 0 failed of 2 studies"), (stdout, err)
    assert f"study good: failed in an earlier run (job {jobs['good'].id}), tried again" in err
    assert (f"study bad: quarantined in an earlier run and its files have not changed (job {jobs['bad'].id}), not "
            "run again") in err  # fmt: skip
    assert "retries the failed ones, and a quarantined study once its files changed" in err
    victim.write_bytes(whole)  # the study repaired
    code, stdout, err = run(studies, "--out", out, "--model", models[0])
    assert code == 0 and stdout.startswith("2 sent, 0 quarantined, 0 failed of 2 studies (1 done"), (stdout, err)
    assert len(_segs(out)) == 2
    after = [(j.id, j.state) for j in JobQueue(out / "queue.db").jobs()]
    assert after == sorted([(jobs["good"].id, "sent"), (jobs["bad"].id, "quarantined"), (3, "sent")]), after


def test_a_refused_study_is_told_how_to_segment_it_anyway_with_a_command_that_exists(shared, tmp_path, models, run):
    folder = tmp_path / "in" / "mr"
    _study(shared, folder, "refused")
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    code, stdout, err = run(tmp_path / "in", "--out", tmp_path / "out", "--model", models[0])
    assert code == 4 and "1 quarantined" in stdout, err
    (job,) = JobQueue(tmp_path / "out" / "queue.db").jobs()
    assert "input refused, not what the model is for: modality" in (job.reason or "")
    assert f"run `medseg infer {folder} --force`" in (job.reason or "") and "rerun with --force" not in job.reason


def test_a_job_resumed_with_another_model_is_segmented_again_by_it_and_audited_as_it(shared, tmp_path, models):
    _study(shared, tmp_path / "in" / "a", "model-change")
    out = tmp_path / "out"
    killed = _cli(tmp_path / "in", "--out", out, "--model", models[0], env={CRASH_ENV: "before_send"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (job,) = JobQueue(out / "queue.db").jobs()
    assert job.result and Path(job.result).is_file()  # model 1's SEG, made but not sent
    resumed = _cli(tmp_path / "in", "--out", out, "--model", models[1])
    assert resumed.returncode == 0, resumed.stderr
    (seg,) = _segs(out)
    card = resolve_model(str(models[1]), "liver").card
    assert pydicom.dcmread(seg).SeriesDescription.startswith(f"{card.name} {card.version}")
    (job,) = JobQueue(out / "queue.db").jobs()
    assert job.idem_key == seg_key(seg, ["liver"], str(card.weights.sha256), job.generation)
    shown = subprocess.run([sys.executable, "-m", "medseg", "audit", "show", "--json"], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    digest = hashlib.sha256(seg.read_bytes()).hexdigest()
    makers = [r["model"] for r in json.loads(shown.stdout) if any(o.get("sha256") == digest for o in r.get("outputs")
                                                                   or [])]  # fmt: skip
    assert makers and all(m["name"] == card.name and m["sha256"] == card.weights.sha256 for m in makers), makers


@pytest.fixture
def read_only(tmp_path: Path):
    """Makes a folder a read-only bind mount (the tests run as root, where permissions alone do not stop a write);
    `read_only.release(folder)` makes it writable again."""
    mounted: list[Path] = []

    def mount(folder: Path) -> Path:
        src = tmp_path / f"ro-src-{len(mounted)}"
        src.mkdir()
        folder.mkdir(parents=True, exist_ok=True)
        bind_read_only(src, folder)
        mounted.append(folder)
        return folder

    def release(folder: Path) -> None:
        subprocess.run(["umount", str(folder)], check=True)
        mounted.remove(folder)

    mount.release = release  # type: ignore[attr-defined]
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_an_out_folder_that_cannot_be_written_is_one_line_naming_it(shared, tmp_path, models, run, read_only):
    _study(shared, tmp_path / "in" / "a", "ro-out")
    code, _stdout, err = run(tmp_path / "in", "--out", read_only(tmp_path / "ro") / "res", "--model", models[0])
    assert code == 4, err
    res = tmp_path / "ro" / "res"
    assert err.strip().splitlines() == [f"error: {res}: cannot write output: Read-only file system. Choose a "
                                        "writable --out folder."]  # fmt: skip
    assert "internal error" not in err


def _running_job(db: Path, proc: subprocess.Popen, timeout: float = 180.0) -> int:
    """Wait until the batch holds a job; its id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                row = conn.execute("SELECT id FROM jobs WHERE state='running'").fetchone()
        except sqlite3.Error:  # not made yet
            row = None
        if row:
            return int(row[0])
        time.sleep(0.05)
    pytest.fail(f"no job started (exit {proc.poll()})")


@pytest.mark.parametrize(("signum", "said"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_an_interrupted_batch_says_so_and_hands_its_job_back_uncounted(shared, tmp_path, models, signum, said):
    src = chaos_files(shared)
    for n in ("a", "b"):
        make_study(src, tmp_path / "in" / n, range(0, 78), f"signal-{n}")  # whole studies: inference is under way
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medseg", "batch", str(tmp_path / "in"), "--out", str(out), "--model", str(models[0])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = _running_job(out / "queue.db", proc)
    proc.send_signal(signum)
    _stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last == (f"error: interrupted ({said}): job {job_id} queued again, the attempt not counted. "
                    "Run the same `medseg batch` again to finish what is left."), err  # fmt: skip
    job = JobQueue(out / "queue.db").job(job_id)
    assert job is not None and job.state == "queued" and job.attempts == 0 and job.lease_owner is None
    again = _cli(tmp_path / "in", "--out", out, "--model", models[0])
    assert again.returncode == 0 and again.stdout.startswith("2 sent, 0 quarantined, 0 failed of 2 studies")
    assert all(j.attempts == 1 for j in JobQueue(out / "queue.db").jobs())
    verify = subprocess.run([sys.executable, "-m", "medseg", "audit", "verify"], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr  # the interrupted attempt left the trail whole


def test_a_research_copy_finished_by_another_model_names_the_model_that_made_the_seg(shared, tmp_path, models):
    """Killed after the SEG was sent and before the research copy, resumed with another --model: the SEG sent stays
    (one ledger row), and the copy's record and the audit name the model that made it, not the rerun's."""
    from medseg.pacs.research import RECORD

    _study(shared, tmp_path / "in" / "a", "research-model")
    key = tmp_path / "deid.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    out, research = tmp_path / "out", tmp_path / "research"
    copy = ["--research", research, "--research-key", key]
    killed = _cli(tmp_path / "in", "--out", out, "--model", models[0], *copy, env={CRASH_ENV: "before_research"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (sent,) = _segs(out)
    made = sent.read_bytes()
    resumed = _cli(tmp_path / "in", "--out", out, "--model", models[1], *copy)
    assert resumed.returncode == 0, resumed.stderr
    assert _segs(out) == [sent] and sent.read_bytes() == made
    queue = JobQueue(out / "queue.db")
    assert len(queue.ledger()) == 1
    first = resolve_model(str(models[0]), "liver").card
    (record,) = research.glob(f"*/{RECORD}")
    assert json.loads(record.read_text())["model"] == {"name": first.name, "version": first.version,
                                                       "weights_sha256": first.weights.sha256}  # fmt: skip
    shown = subprocess.run([sys.executable, "-m", "medseg", "audit", "show", "--json"], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    audited = [r["model"] for r in json.loads(shown.stdout) if r["command"] == "pacs.job"]
    assert audited[-1] == {"name": first.name, "version": first.version, "sha256": first.weights.sha256}, audited


def test_the_queue_finds_a_batch_study_by_uid_and_content_and_reopens_only_what_a_rerun_should(tmp_path):
    queue = JobQueue(tmp_path / "queue.db")
    job, how = queue.add_study("1.2.3", "d1", "/in/a")
    assert how == "new" and job.generation == 1 and job.state == "queued"
    assert queue.add_study("1.2.3", "d1", "/moved/a") == (queue.job(job.id), "open")
    assert queue.job(job.id).input == "/moved/a"
    other, how = queue.add_study("1.2.4", "d9", "/moved/a")  # a second study in the same folder
    assert how == "new" and queue.job(job.id).state == "queued"
    changed, how = queue.add_study("1.2.3", "d2", "/moved/a")  # the files changed before it ran
    assert how == "new" and changed.generation == 2
    assert queue.job(job.id).state == "superseded" and queue.job(other.id).state == "queued"
    assert queue.add_study("1.2.3", "d1", "/moved/a")[1] == "retried"  # the old files are back
    lease = queue.lease("w", 60, job_id=other.id)
    assert lease is not None
    queue.quarantine(lease, "bad")
    assert queue.add_study("1.2.4", "d9", "/moved/a")[1] == "quarantined"
    lease = queue.lease("w", 60, job_id=changed.id)
    assert lease is not None
    queue.record_sent(lease, "folder", "key", "1.2.3.4")
    assert queue.add_study("1.2.3", "d2", "/elsewhere/b")[1] == "done"
    assert queue.job(changed.id).input == "/moved/a"


def test_a_results_folder_that_cannot_be_written_fails_the_job_for_a_retry_not_a_quarantine(
    shared, tmp_path, models, run, read_only
):
    _study(shared, tmp_path / "in" / "a", "ro-results")
    out = tmp_path / "out"
    read_only(out / "results")
    code, stdout, err = run(tmp_path / "in", "--out", out, "--model", models[0])
    assert code == 4 and stdout.startswith("0 sent, 0 quarantined, 1 failed of 1 studies"), (stdout, err)
    (job,) = JobQueue(out / "queue.db").jobs()
    assert job.state == "failed" and "cannot write output" in (job.reason or "")
    assert str(out / "results") in (job.reason or "")
    read_only.release(out / "results")
    code, stdout, err = run(tmp_path / "in", "--out", out, "--model", models[0])
    assert code == 0 and stdout.startswith("1 sent, 0 quarantined, 0 failed of 1 studies"), (stdout, err)


def test_a_study_that_changed_gets_a_seg_of_its_own_uids(shared, tmp_path, models, run):
    """A study segmented again because its files changed (a slice removed) once got the earlier SEG's derived SOP
    Instance UID: two different objects under one UID at the PACS. Same files, same UIDs; other files, other UIDs."""
    _study(shared, tmp_path / "in" / "a", "changed")
    out = tmp_path / "out"
    assert run(tmp_path / "in", "--out", out, "--model", models[0])[0] == 0
    (first,) = _segs(out)
    before = pydicom.dcmread(first)
    sorted((tmp_path / "in" / "a").iterdir())[-1].unlink()
    code, _, err = run(tmp_path / "in", "--out", out, "--model", models[0])
    assert code == 0, err
    segs = [pydicom.dcmread(p) for p in _segs(out)]
    assert len({s.SOPInstanceUID for s in segs}) == len(segs) == 2, [s.SOPInstanceUID for s in segs]
    again = next(s for s in segs if s.SOPInstanceUID != before.SOPInstanceUID)
    refs = [len(s.ReferencedSeriesSequence[0].ReferencedInstanceSequence) for s in (before, again)]
    assert refs[1] == refs[0] - 1


def test_a_study_the_batch_will_not_read_is_quarantined_with_its_reason(shared, tmp_path, models):
    """A study whose only series names two patients, beside a good study: a re-probe saw exit 0 and the skip said
    nowhere; a later review saw the study vanish from the run. It is a job, quarantined with the reason (exit 4)."""
    import pydicom

    _study(shared, tmp_path / "in" / "good", "skip-good")
    mixed = tmp_path / "in" / "mixed"
    make_study(chaos_files(shared), mixed, SLICES, "skip-mixed")
    for n, f in enumerate(sorted(mixed.iterdir())):
        ds = pydicom.dcmread(f)
        ds.PatientID = "A" if n < 10 else "B"
        ds.save_as(f)
    done = _cli(tmp_path / "in", "--out", tmp_path / "out", "--model", models[0])
    assert done.returncode == 4, done.stderr
    assert any("quarantined" in line and "2 different PatientID" in line
               for line in done.stderr.splitlines()), done.stderr  # fmt: skip
    assert len(_segs(tmp_path / "out")) == 1
