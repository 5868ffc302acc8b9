"""The service's de-identified research copy (`research:` / `medseg batch --research`): each segmented study and its
SEG de-identified together, leak-checked, and published whole; nothing identifying ever under the research folder;
a kill at any point loses nothing and publishes one copy; a copy with a finding is withheld, not published."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml
from pacs_helpers import Served, chaos_files, make_study, storescu, wait_jobs, write_config

from medseg.deid.check import check_tree
from medseg.deid.conformance import dciodvfy_errors
from medseg.errors import UsageError
from medseg.pacs.config import Research, load_config
from medseg.pacs.queue import JobQueue
from medseg.pacs.research import make_copy, staging_dir
from medseg.pacs.status import status
from medseg.pacs.worker import CRASH_ENV

PHI = {
    "PatientName": "Quixotewell^Rosamund^Ingrid",
    "PatientID": "MRN-8841-2093",
    "PatientBirthDate": "19470312",
    "AccessionNumber": "ACC77120934",
    "InstitutionName": "Saint Hypothetica Infirmary",
    "ReferringPhysicianName": "Brackenbury^Theodora",
    "StudyID": "ST-55012",
    "OperatorsName": "Vandermolen^Cas",
}


def _phi_study(shared: Path, dst: Path, ks: range, seed: str) -> str:
    """A real CT study (CHAOS slices) whose headers carry the identity above; returns its StudyInstanceUID."""
    uid, _ = make_study(chaos_files(shared), dst, ks, seed)
    for f in dst.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.save_as(f)
    return uid


def _key(path: Path) -> Path:
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(0o600)  # a secret others can read is refused
    return path


def _batch(studies: Path, out: Path, research: Path, key: Path, env: dict[str, str] | None = None):
    cmd = [sys.executable, "-m", "medseg", "batch", str(studies), "--out", str(out), "--research", str(research),
           "--research-key", str(key)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ | (env or {}))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_no_phi(folder: Path) -> None:
    """Not one byte sequence of the identity (as stored, upper-cased, or name parts) anywhere under `folder`."""
    parts = {p for v in PHI.values() for p in v.split("^") if len(p) > 3}
    needles = {v.encode() for v in PHI.values()} | {p.encode() for p in parts}
    for name, data in _files(folder).items():
        hits = [n for n in needles if n in data or n.upper() in data]
        assert not hits, f"{name} holds {hits}"


def _published(research: Path) -> list[Path]:
    return sorted(p for p in research.iterdir() if p.is_dir() and not p.name.startswith("."))


def _assert_copy_whole(copy: Path, study_src: Path, seg_src: Path) -> None:
    """Every CT slice and the SEG, the SEG valid (dciodvfy) and referencing the de-identified slices, nothing
    identifying, the leak check clean."""
    paths = sorted(copy.rglob("*.dcm"))
    datasets = [pydicom.dcmread(p) for p in paths]
    ct = {d.SOPInstanceUID: d for d in datasets if d.Modality == "CT"}
    ((seg_path, seg),) = [(p, d) for p, d in zip(paths, datasets, strict=True) if d.Modality == "SEG"]
    assert dciodvfy_errors(seg_path) == set()  # the de-identified SEG is still a valid SEG
    assert len(ct) == len(list(study_src.rglob("*.dcm")))
    refs = [r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence]
    assert refs and set(refs) <= set(ct)
    assert {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence} <= {d.SeriesInstanceUID for d in ct.values()}
    assert seg.StudyInstanceUID == copy.name and {d.StudyInstanceUID for d in ct.values()} == {copy.name}
    assert seg.FrameOfReferenceUID in {d.FrameOfReferenceUID for d in ct.values()}
    assert seg.PatientIdentityRemoved == "YES" and seg.PatientName == next(iter(ct.values())).PatientName
    _assert_no_phi(copy)
    originals = copy.parent.parent / "originals"
    originals.mkdir(exist_ok=True)
    for src in [*study_src.rglob("*.dcm"), seg_src]:
        os.link(src, originals / f"{len(list(originals.iterdir())):04d}.dcm")
    result = check_tree(originals, copy, ocr=False)
    assert result.files_checked == len(ct) + 2  # the slices, the SEG and research-record.json
    assert result.identifying_values > len(PHI) and not result.findings


def test_config_research_paths_are_taken_from_the_config_file_and_checked_at_start(tmp_path: Path) -> None:
    _key(tmp_path / "deid.key")
    cfg = {"storage": "store", "destination": {"folder": "seg"},
           "research": {"folder": "research", "key_file": "deid.key", "options": ["retain-dates-shifted"]}}  # fmt: skip
    (tmp_path / "pacs.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(tmp_path / "pacs.yaml")
    assert config.research is not None
    assert config.research.folder == tmp_path / "research" and config.research.key_file == tmp_path / "deid.key"
    assert config.research.options == ["retain-dates-shifted"] and config.research.pixels == "scan"
    bad = {
        "cannot read the key file": {"key_file": "missing.key"},
        "overlaps the storage folder": {"folder": "store/research"},
        "unknown de-identification option": {"options": ["retain-everything"]},
    }
    for message, change in bad.items():
        (tmp_path / "pacs.yaml").write_text(yaml.safe_dump(cfg | {"research": cfg["research"] | change}))
        with pytest.raises(UsageError, match=message):
            load_config(tmp_path / "pacs.yaml")


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--research", "r"], "--research and --research-key go together"),
     (["--research", "{out}/r", "--research-key", "{key}"], "overlaps the storage folder"),
     (["--research", "r", "--research-key", "{key}", "--research-option", "nope"], "unknown de-identification")],
)  # fmt: skip
def test_batch_refuses_a_research_copy_it_could_not_make_in_one_line_with_exit_2(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    (tmp_path / "in").mkdir()
    key, out = _key(tmp_path / "k"), tmp_path / "o"
    args = [a.format(out=out, key=key) for a in extra]
    cmd = [sys.executable, "-m", "medseg", "batch", str(tmp_path / "in"), "-o", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_batch_publishes_one_deidentified_copy_of_study_and_seg_and_a_rerun_changes_nothing(
    shared: Path, tmp_path: Path
) -> None:
    study_src = tmp_path / "in" / "a"
    _phi_study(shared, study_src, range(78), "research-a")
    key, out, research = _key(tmp_path / "deid.key"), tmp_path / "out", tmp_path / "research"
    first = _batch(tmp_path / "in", out, research, key)
    assert first.returncode == 0, first.stderr
    assert "research copy published" in first.stderr + first.stdout
    (copy,) = _published(research)
    assert sorted(p.name for p in research.iterdir()) == [copy.name]  # no staging, no hidden leftovers
    (seg_src,) = (out / "seg").rglob("*.dcm")
    _assert_copy_whole(copy, study_src, seg_src)
    record = json.loads((copy / "research-record.json").read_text())
    assert record["leak_check"]["findings"] == 0 and record["deid"]["files_written"] == 79
    assert record["organs"] == ["liver"] and len(record["model"]["weights_sha256"]) == 64
    assert not any((out / "research").glob("job-*")), "staging left in storage"
    copies = status(JobQueue(out / "queue.db"))["research"]
    assert copies == {"published": 1, "withheld": 0, "superseded": 0, "withheld_jobs": []}
    before = _files(copy)
    again = _batch(tmp_path / "in", out, research, key)
    assert again.returncode == 0 and again.stdout.startswith("1 sent, 0 quarantined, 0 failed of 1 studies")
    assert _files(copy) == before and _published(research) == [copy]


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["during_research", "after_research"])
def test_a_batch_killed_during_the_research_copy_publishes_exactly_one_copy_on_rerun(
    shared: Path, tmp_path: Path, crash_at: str
) -> None:
    study_src = tmp_path / "in" / "a"
    _phi_study(shared, study_src, range(0, 78, 3), f"research-{crash_at}")
    key, out, research = _key(tmp_path / "deid.key"), tmp_path / "out", tmp_path / "research"
    killed = _batch(tmp_path / "in", out, research, key, {CRASH_ENV: crash_at})
    assert killed.returncode == -9, killed.stderr
    published = _published(research) if research.is_dir() else []
    assert len(published) == (crash_at == "after_research")
    staged = any((out / "research").glob("job-1-f*"))
    assert staged == (crash_at == "during_research")  # killed mid-way: its staging is left for the rerun to clear
    rerun = _batch(tmp_path / "in", out, research, key)
    assert rerun.returncode == 0, rerun.stderr
    (copy,) = _published(research)
    assert sorted(p.name for p in research.iterdir()) == [copy.name]
    assert not any((out / "research").glob("job-*"))
    (seg_src,) = (out / "seg").rglob("*.dcm")
    _assert_copy_whole(copy, study_src, seg_src)
    db = sqlite3.connect(out / "queue.db")
    assert db.execute("SELECT state, attempts FROM jobs").fetchall() == [("sent", 2)]
    assert db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 1  # the SEG was not sent twice
    assert db.execute("SELECT state, folder FROM research").fetchall() == [("published", copy.name)]


def test_a_copy_with_a_leak_is_withheld_in_storage_and_never_published(shared: Path, tmp_path: Path) -> None:
    """A de-identification defect is simulated by writing the patient's name back into one output as it is
    written; the real leak check must find it, and nothing may reach the research folder."""
    study_src = tmp_path / "study"
    _phi_study(shared, study_src, range(30, 36), "research-leak")
    storage, research = tmp_path / "storage", Research(folder=tmp_path / "research", key_file=_key(tmp_path / "k"),
                                                       pixels="off")  # fmt: skip
    deid_out = staging_dir(storage, 7, 3) / "deid"
    planted: list[str] = []

    def defect(record: object) -> None:  # as if the run itself had written the name: its digest is the one recorded
        output = getattr(record, "output", None)
        if output and not planted:
            ds = pydicom.dcmread(deid_out / output)
            ds.ImageComments = PHI["PatientName"]
            ds.save_as(deid_out / output)
            record.output_sha256 = hashlib.sha256((deid_out / output).read_bytes()).hexdigest()  # type: ignore[attr-defined]
            planted.append(output)

    outcome = make_copy(research, storage, 7, 3, [study_src], {"generation": 1}, on_file=defect)
    assert planted and outcome.state == "withheld" and outcome.folder is None
    assert outcome.reason is not None and planted[0] in outcome.reason and "(0020,4000)" in outcome.reason
    assert PHI["PatientName"] not in outcome.reason and "Quixotewell" not in outcome.reason
    assert not research.folder.exists() or not any(research.folder.iterdir())
    withheld = storage / "research" / "withheld" / "job-7"
    assert (withheld / "reason.txt").read_text().strip() == outcome.reason
    assert not (withheld / "input").exists()  # the originals' links are not kept


def test_a_copy_the_leak_check_refuses_is_withheld_not_a_failed_job(shared: Path, tmp_path: Path) -> None:
    """A released file changed after the run wrote it (its SHA-256 no longer the manifest's) makes the check refuse
    the copy (since re-probe 20): the job withholds the copy with that reason instead of failing on the error."""
    study_src = tmp_path / "study"
    _phi_study(shared, study_src, range(30, 33), "research-refused")
    storage, research = tmp_path / "storage", Research(folder=tmp_path / "research", key_file=_key(tmp_path / "k"),
                                                       pixels="off")  # fmt: skip
    deid_out = staging_dir(storage, 8, 1) / "deid"
    changed: list[str] = []

    def after_the_run(record: object) -> None:
        output = getattr(record, "output", None)
        if output and not changed:
            with (deid_out / output).open("ab") as f:
                f.write(b"\0\0")
            changed.append(output)

    outcome = make_copy(research, storage, 8, 1, [study_src], {"generation": 1}, on_file=after_the_run)
    assert changed and outcome.state == "withheld" and outcome.folder is None
    assert outcome.reason is not None and outcome.reason.startswith("leak check refused the copy: ")
    assert "output_sha256" in outcome.reason and PHI["PatientName"] not in outcome.reason
    assert not research.folder.exists() or not any(research.folder.iterdir())


def test_an_older_generation_never_replaces_a_newer_published_copy(shared: Path, tmp_path: Path) -> None:
    """Two jobs of one study (instances arrived after the first was sent) may finish their copies in either order;
    the copy of the later generation is the one that stays published."""
    study_src = tmp_path / "study"
    _phi_study(shared, study_src, range(30, 34), "research-generations")
    storage = tmp_path / "storage"
    research = Research(folder=tmp_path / "research", key_file=_key(tmp_path / "k"), pixels="off")
    newer = make_copy(research, storage, 2, 1, [study_src], {"generation": 2})
    assert newer.state == "published" and newer.folder is not None
    older = make_copy(research, storage, 1, 1, [study_src], {"generation": 1})
    assert older.state == "superseded" and older.folder is None
    record = json.loads((research.folder / newer.folder / "research-record.json").read_text())
    assert record["generation"] == 2 and _published(research.folder) == [research.folder / newer.folder]
    assert not any((storage / "research").glob("job-*"))
    again = make_copy(research, storage, 3, 1, [study_src], {"generation": 3})
    assert again.state == "published" and again.folder == newer.folder
    assert json.loads((research.folder / newer.folder / "research-record.json").read_text())["generation"] == 3
    assert sorted(p.name for p in research.folder.iterdir()) == [newer.folder]


@pytest.mark.slow
def test_the_service_publishes_the_research_copy_of_a_study_received_over_c_store(shared: Path, tmp_path: Path) -> None:
    """The whole path as hospital IT runs it: YAML config with `research:` (relative paths), storescu into
    `medseg pacs serve`, SEG to its destination, the copy published, `medseg pacs status` counting it."""
    study_src = tmp_path / "study"
    _phi_study(shared, study_src, range(20, 44), "research-service")
    _key(tmp_path / "deid.key")
    config = tmp_path / "pacs.yaml"
    write_config(config, tmp_path / "store", {"folder": str(tmp_path / "seg")}, port=0,
                 research={"folder": "research", "key_file": "deid.key", "pixels": "off"})  # fmt: skip
    served = Served(config, 0, tmp_path / "serve.log").start()
    try:
        storescu(served.port, study_src)
        wait_jobs(tmp_path / "store" / "queue.db", 1, states=("sent",), settled=True)
    finally:
        served.stop()
    (copy,) = _published(tmp_path / "research")
    (seg_src,) = (tmp_path / "seg").rglob("*.dcm")
    _assert_copy_whole(copy, study_src, seg_src)
    status_cmd = [sys.executable, "-m", "medseg", "pacs", "status", "--config", str(config)]
    shown = subprocess.run(status_cmd, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "research copies: 1 published, 0 withheld" in shown.stdout, shown.stderr


def test_a_research_copy_that_cannot_be_made_leaves_the_job_open_and_the_retry_does_not_resend(
    shared: Path, tmp_path: Path
) -> None:
    """The key file disappears after the start: the SEG is still delivered once, the job waits (pending, then
    failed) with the reason, and once the key is back a retry makes the copy without sending the SEG again."""
    from medseg.pacs.batch import batch_config, enqueue, run_batch

    _phi_study(shared, tmp_path / "in" / "a", range(30, 40), "research-no-key")
    key = _key(tmp_path / "deid.key")
    secret = key.read_bytes()
    config = batch_config(tmp_path / "out", "liver", None, "auto", None, tmp_path / "research", key)
    key.unlink()
    queue = enqueue(config, tmp_path / "in")
    events: list[str] = []
    run_batch(config, queue, events.append)
    (job,) = queue.jobs()
    assert job.state == "failed" and job.reason is not None and job.reason.startswith("research copy: ")
    assert "cannot read the key file" in job.reason and job.attempts == config.retry.max_attempts
    assert len(queue.ledger()) == 1 and not queue.research()
    assert not (tmp_path / "research").exists() or not any((tmp_path / "research").iterdir())
    key.write_bytes(secret)
    key.chmod(0o600)
    assert queue.retry(job.id) == [job.id]
    run_batch(config, queue, events.append)
    (job,) = queue.jobs()
    assert job.state == "sent" and len(queue.ledger()) == 1
    assert [r["state"] for r in queue.research()] == ["published"]
    assert len(list((tmp_path / "out" / "seg").rglob("*.dcm"))) == 1
    assert any("research copy published" in e for e in events)


def test_the_pacs_echo_of_our_own_seg_is_left_out_of_the_copy_inputs(tmp_path: Path) -> None:
    """A study folder that holds our SEG sent back by the PACS (same SOP Instance UID as the job's SEG) must not put
    that instance into the copy twice; a cut-short write is not input either."""
    from medseg.pacs.research import link_inputs

    study, seg = tmp_path / "study", tmp_path / "results" / "1.2.3.dcm"
    from medseg.io.atomic import TEMPORARY_PREFIX

    cut_short = study / "s1" / f"{TEMPORARY_PREFIX}c.dcm-x1.dcm"  # a write a killed receiver never renamed
    for f in (study / "s1" / "a.dcm", study / "s1" / "b.dcm", study / "s9" / "1.2.3.dcm", seg, cut_short):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(f.name.encode())
    assert link_inputs([study, seg], tmp_path / "in", frozenset({"1.2.3.dcm"})) == 3
    linked = sorted(p.relative_to(tmp_path / "in").as_posix() for p in (tmp_path / "in").rglob("*.dcm"))
    assert linked == ["00/s1/a.dcm", "00/s1/b.dcm", "01/1.2.3.dcm"]
    assert (tmp_path / "in" / "00" / "s1" / "a.dcm").stat().st_ino == (study / "s1" / "a.dcm").stat().st_ino


def test_a_copy_the_leak_check_cannot_prove_is_withheld() -> None:
    """The deid check now reports what it could not check; the research copy once ignored that (a deid review)."""
    from medseg.deid.check import CheckResult
    from medseg.pacs.research import _not_proved

    assert _not_proved(CheckResult(files_checked=3), scan=True) is None
    assert _not_proved(CheckResult(unchecked=[("a/b", "a link to a folder")]), scan=True) == (
        "leak check could not check a/b: a link to a folder")  # fmt: skip
    undecodable = CheckResult(pixels_unchecked=[("s/1.dcm", "pixel data cannot be decoded (ValueError)")])
    assert _not_proved(undecodable, scan=True) == (
        "leak check could not check the pixels of s/1.dcm: pixel data cannot be decoded (ValueError)")  # fmt: skip
    assert _not_proved(undecodable, scan=False) is None  # pixels: off, the operator's documented choice
