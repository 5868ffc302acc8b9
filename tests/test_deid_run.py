"""`medseg deid` on every file of the shared corpus: no identity left, references intact, resumable, audited."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pydicom
import pytest
from cli_run import run_in_process as _cli

from medseg.deid.check import check_tree
from medseg.deid.conformance import Conformance, measure
from medseg.deid.keyed import KeyedMapper
from medseg.deid.leakcheck import collect, normalise, read_any
from medseg.deid.runner import DeidSettings, deidentify_tree, discover, input_digest
from tests.deid_fixtures import SECRET, corpus_runs, run_deid, tree_digest


@pytest.fixture(scope="session")
def corpus_run(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return corpus_runs(shared, tmp_path_factory)


UID_PATH = re.compile(r"^(2\.25\.\d+/2\.25\.\d+|quarantine)/2\.25\.\d+(-\d+)?\.dcm$")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deid", "dicom"])
def test_leak_check_finds_nothing_after_and_the_values_before(corpus_run, name: str) -> None:
    src, out, _ = corpus_run[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matchers = collect(discover(src).files)
        after = check_tree(src, out, ocr=False, matchers=matchers)
        before = check_tree(src, src, ocr=False, matchers=matchers)
    assert after.files_checked >= 30 and after.findings == [], [f.line() for f in after.findings[:5]]
    flagged = {f.file for f in before.findings}
    carrying = []
    for path in discover(src).files:
        ds = read_any(path)
        if ds is not None and (ds.get("PatientName") or ds.get("PatientID")) and str(ds.get("PatientID", "")):
            carrying.append(path.relative_to(src).as_posix())
    assert carrying and set(carrying) <= flagged, sorted(set(carrying) - flagged)[:5]
    assert matchers.files >= after.files_checked


@pytest.mark.parametrize("name", ["deid", "dicom"])
def test_output_names_and_manifest_carry_no_phi(corpus_run, name: str) -> None:
    src, out, result = corpus_run[name]
    names = [p.relative_to(out).as_posix() for p in out.rglob("*.dcm")]
    assert names and all(UID_PATH.match(n) for n in names), [n for n in names if not UID_PATH.match(n)][:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matchers = collect(discover(src).files) if name == "deid" else None  # deid/ holds the richest identities
    manifest = (out / "deid-manifest.json").read_text()
    assert matchers is None or matchers.strong.first(normalise(manifest)) is None
    assert all(r.status in ("written", "quarantined", "skipped", "dropped") for r in result.records)
    data = json.loads(manifest)
    assert data["table"].endswith("2024b") and len(data["files"]) == len(list(discover(src).files))
    for record in data["files"]:
        assert record["input_ref"].startswith("hmac-sha256:") and "input_sha256" not in record
        assert record["input_digest"].startswith("hmac-sha256:") and len(record["input_digest"]) == 12 + 64


@pytest.mark.slow
def test_basic_profile_conformance_and_useful_attributes_kept(corpus_run) -> None:
    total = Conformance()
    for name in ("deid", "dicom"):
        src, out, result = corpus_run[name]
        for path in discover(src).files:
            rec = next(r for r in result.records if r.input_digest == input_digest(KeyedMapper(SECRET), _sha(path)))
            if rec.status != "written":
                continue
            original, output = read_any(path), pydicom.dcmread(out / rec.output)
            total.add(measure(original, output))
    assert sum(total.total.values()) > 3000
    assert total.applied_pct == 100.0, total.failures.most_common(5)
    assert total.kept_pct >= 99.0, total.keep_total


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corpus_outcomes_nothing_dicomdir_or_broken_passes_through(corpus_run) -> None:
    _, out, result = corpus_run["dicom"]
    dropped = [r for r in result.records if r.status == "dropped"]
    skipped = [r for r in result.records if r.status == "skipped"]
    assert len(dropped) >= 7 and all("DICOMDIR" in r.reason for r in dropped)
    assert any("truncated" in r.reason for r in skipped) and any("not a DICOM" in r.reason for r in skipped)
    assert not list(out.rglob("DICOMDIR*")) and not list(out.rglob(".tmp-*"))


def test_same_key_same_output_and_inputs_untouched(shared: Path, tmp_path: Path) -> None:
    src = shared / "deid" / "tcia_pseudo_phi_mr" / "original"
    before = tree_digest(src)
    run_deid(src, tmp_path / "a")
    run_deid(src, tmp_path / "b")
    digest_a = {k: v for k, v in tree_digest(tmp_path / "a").items() if not k.startswith(".deid-state")}
    assert digest_a == {k: v for k, v in tree_digest(tmp_path / "b").items() if not k.startswith(".deid-state")}
    assert tree_digest(src) == before
    series = {p.parent for p in (tmp_path / "a").rglob("*.dcm")}
    assert len(series) == 1, "one series in, one series out"
    other = deidentify_tree(src, tmp_path / "c", b"another secret of enough length!!", DeidSettings(scan_pixels=False))
    assert {r.output for r in other.records}.isdisjoint({r.output for r in run_deid(src, tmp_path / "a").records})


def test_interrupted_run_resumes_to_the_same_result(shared: Path, tmp_path: Path) -> None:
    src = shared / "deid" / "tcia_pseudo_phi_mr" / "original"
    full = tmp_path / "full"
    run_deid(src, full)
    part = tmp_path / "part"
    seen = []

    def crash(record) -> None:
        seen.append(record)
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deidentify_tree(src, part, SECRET, DeidSettings(scan_pixels=False), on_file=crash)
    assert not list(part.rglob(".tmp-*"))
    result = run_deid(src, part)
    assert sum(r.resumed for r in result.records) == 7
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith((".deid-state", "deid-manifest"))}  # noqa: E731
    assert strip(tree_digest(part)) == strip(tree_digest(full))


def test_resuming_with_other_settings_is_refused(shared: Path, tmp_path: Path) -> None:
    from medseg.errors import UsageError

    src = shared / "deid" / "tcia_pseudo_phi_mr" / "original" / "1-01.dcm"
    run_deid(src, tmp_path / "out")
    with pytest.raises(UsageError, match="options"):
        run_deid(src, tmp_path / "out", options=frozenset({"retain-uids"}))


def test_damaged_output_is_redone_on_rerun(shared: Path, tmp_path: Path) -> None:
    src = shared / "deid" / "tcia_pseudo_phi_mr" / "original"
    out = tmp_path / "out"
    first = run_deid(src, out)
    victim = out / first.records[0].output
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # a file cut short (e.g. disk full outside our atomic write)
    again = run_deid(src, out)
    assert victim.read_bytes() == good and sum(r.resumed for r in again.records) == len(first.records) - 1


def _uids(folder: Path) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in folder.rglob("*.dcm"))}


def test_seg_with_its_ct_still_points_at_the_right_images(shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    base = shared / "dicom" / "seg" / "dcmqi" / "segmentations"
    for f in [*(base / "ct-3slice").glob("*.dcm"), base / "liver.dcm"]:
        (src / f.name).write_bytes(f.read_bytes())
    run_deid(src, tmp_path / "out")
    objects = _uids(tmp_path / "out")
    seg = next(ds for ds in objects.values() if ds.Modality == "SEG")
    cts = [ds for ds in objects.values() if ds.Modality == "CT"]
    assert len(cts) == 3
    ref_series = seg.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == cts[0].SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in ref_series.ReferencedInstanceSequence}
    assert referenced == {str(ct.SOPInstanceUID) for ct in cts}
    assert seg.FrameOfReferenceUID == cts[0].FrameOfReferenceUID and seg.StudyInstanceUID == cts[0].StudyInstanceUID
    per_frame = {
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert per_frame <= referenced


def test_rtstruct_with_its_ct_still_points_at_the_right_images(shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    base = shared / "dicom" / "rtstruct" / "rt-utils" / "mock_data"
    for name in ("ct_1.dcm", "ct_2.dcm", "rt.dcm"):
        (src / name).write_bytes((base / name).read_bytes())
    run_deid(src, tmp_path / "out")
    objects = _uids(tmp_path / "out")
    rt = next(ds for ds in objects.values() if ds.Modality == "RTSTRUCT")
    cts = {uid: ds for uid, ds in objects.items() if ds.Modality == "CT"}
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    rt_in, ct_in = pydicom.dcmread(base / "rt.dcm"), pydicom.dcmread(base / "ct_1.dcm")
    same_before = rt_in.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == ct_in.FrameOfReferenceUID
    assert (frame.FrameOfReferenceUID == next(iter(cts.values())).FrameOfReferenceUID) == same_before  # as in input
    assert len({ds.SeriesInstanceUID for ds in cts.values()}) == 1
    images = {
        c.ReferencedSOPInstanceUID
        for roi in rt.ROIContourSequence for contour in roi.ContourSequence for c in contour.ContourImageSequence
    }  # fmt: skip
    assert images and images <= set(cts)
    for roi in rt.StructureSetROISequence:
        assert roi.ReferencedFrameOfReferenceUID == frame.FrameOfReferenceUID


def test_cli_runs_checks_and_audits_without_phi(shared: Path, tmp_path: Path, capsys) -> None:
    src = shared / "deid" / "tcia_pseudo_phi_mr" / "original"
    key = tmp_path / "deid.key"
    assert _cli(["keys", "secret", str(key)], capsys)[0] == 0
    code, out, err = _cli(["deid", str(src), str(tmp_path / "out"), "--key-file", str(key), "--pixels", "off"], capsys)
    assert code == 0, err
    assert "26 written" in out and "MILLER" not in out + err
    code, out, err = _cli(["deid", "check", str(src), str(tmp_path / "out")], capsys)
    assert code == 0 and "0 leak(s) in 26 file(s)" in out, err
    code, out, err = _cli(["deid", "check", str(src), str(src)], capsys)
    assert code == 1 and "(0010,0010)" in err and "1-01.dcm" in err
    assert "MILLER" not in err.upper() and "9894340694" not in err
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.dcm").write_bytes((src / "1-01.dcm").read_bytes())
    (mixed / "notes.txt").write_text("not DICOM")
    code, _, err = _cli(["deid", str(mixed), str(tmp_path / "s"), "--key-file", str(key), "--strict"], capsys)
    assert code == 3, err
    short = tmp_path / "short.key"
    short.write_text("too short")
    code, _, err = _cli(["deid", str(src), str(tmp_path / "u"), "--key-file", str(short)], capsys)
    assert code == 2 and "32" in err
    code, _, err = _cli(["deid", str(src), str(tmp_path / "out"), "--key-file", str(short.with_name("deid.key")),
                         "--option", "retain-everything"], capsys)  # fmt: skip
    assert code == 2 and "retain-everything" in err
    audit = b"".join(p.read_bytes() for p in Path(os.environ["MEDSEG_AUDIT_DIR"]).rglob("*") if p.is_file())
    assert b"deid" in audit and b"MILLER" not in audit.upper() and b"9894340694" not in audit


@pytest.mark.parametrize("big_endian", [False, True])
def test_the_input_preamble_never_reaches_the_output(shared: Path, tmp_path: Path, big_endian: bool) -> None:
    """The 128 bytes before "DICM" are free for any use (PS3.10 7.1) and some systems write patient data there; both
    encoding paths (the raw copy, and the full path a big endian input takes) write zeros instead."""
    src = tmp_path / "in"
    src.mkdir()
    ds = pydicom.dcmread(sorted((shared / "ct" / "chaos_ct_sample" / "dicom").glob("*.dcm"))[10])
    if big_endian:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    planted = b"PATIENT ZZPREAMBLE^NAME ID 987654321 DOB 19450317".ljust(128, b" ")
    ds.preamble = planted
    if big_endian:
        for _ in ds.iterall():  # every element parsed, so it can be written in the other byte order
            pass
        ds.set_original_encoding(False, False, ds.original_character_set)
        pydicom.dcmwrite(src / "slice.dcm", ds, enforce_file_format=True, implicit_vr=False, little_endian=False)
    else:
        ds.save_as(src / "slice.dcm", enforce_file_format=True)
    assert (src / "slice.dcm").read_bytes()[:128] == planted
    result = run_deid(src, tmp_path / "out")
    (record,) = result.records
    data = (tmp_path / "out" / record.output).read_bytes()
    assert data[:128] == b"\x00" * 128 and data[128:132] == b"DICM"
    assert b"ZZPREAMBLE" not in data and b"987654321" not in data


def _special_entries(folder: Path, linked: Path) -> None:
    """A named pipe (reading it blocks forever) and a symbolic link to a folder of identifiable originals."""
    os.mkfifo(folder / "pipe")
    (folder / "linked").symlink_to(linked, target_is_directory=True)


@pytest.mark.timeout(120)
def test_pipes_and_linked_folders_are_recorded_as_skipped_never_opened(shared: Path, tmp_path: Path, capsys) -> None:
    """A named pipe in the input once blocked `medseg deid` forever; a symlinked folder was skipped without a
    record. Both are now manifest records with a reason, and --strict refuses them (exit 3)."""
    src = tmp_path / "in"
    src.mkdir()
    originals = sorted((shared / "deid" / "tcia_pseudo_phi_mr" / "original").glob("*.dcm"))
    for f in originals[:2]:
        (src / f.name).write_bytes(f.read_bytes())
    _special_entries(src, originals[0].parent)
    result = run_deid(src, tmp_path / "out")
    assert (result.count("written"), result.count("skipped")) == (2, 2)
    reasons = sorted(r.reason or "" for r in result.records if r.status == "skipped")
    assert "named pipe" in reasons[0] and "symbolic link to a folder" in reasons[1]
    manifest = json.loads(result.manifest.read_text())
    assert manifest["counts"] == {"written": 2, "skipped": 2} and len(manifest["files"]) == 4
    assert all(r["input_ref"].startswith("hmac-sha256:") for r in manifest["files"])
    key = tmp_path / "deid.key"
    key.write_bytes(SECRET)
    key.chmod(0o600)
    code, _, err = _cli(["deid", str(src), str(tmp_path / "strict"), "--key-file", str(key), "--strict"], capsys)
    assert code == 3 and "not read" in err and "Remove it" in err, err


@pytest.mark.timeout(120)
def test_check_fails_on_entries_of_the_release_it_cannot_read(shared: Path, tmp_path: Path, capsys) -> None:
    """A link to a folder of originals inside the de-identified folder is copied along by `cp -rL` or an archiver:
    the check must not pass a release it could not read, and a pipe there must not hang it."""
    src = shared / "deid" / "tcia_pseudo_phi_mr" / "original"
    out = tmp_path / "out"
    run_deid(src, out)
    code, stdout, err = _cli(["deid", "check", str(src), str(out), "--no-ocr"], capsys)
    assert code == 6 and "0 leak(s) in 26 file(s)" in stdout and "pixels NOT checked in 26" in err, err
    _special_entries(out, src)
    code, stdout, err = _cli(["deid", "check", str(src), str(out), "--no-ocr"], capsys)
    assert code == 1 and "2 entry(ies) that could not be checked" in stdout, err
    assert "linked: symbolic link to a folder" in err and "pipe: named pipe" in err
    result = check_tree(src, out, ocr=False)
    assert result.findings == [] and sorted(name for name, _ in result.unchecked) == ["linked", "pipe"]
