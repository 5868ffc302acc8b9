"""`medseg infer --overwrite` replaces a case folder's result as a whole: nothing of an earlier run survives beside
the new one (not another patient's SEG), and a run that fails leaves the earlier result as it was."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pydicom
import pytest
from cli_run import run_in_process
from infer_fixtures import make_model_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("model"), seed=1, roi=(64, 64, 64), foreground_bias=1000.0)


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "overwrite-cache"))


def _series(shared: Path, dst: Path, ks: range, **changes: object) -> Path:
    """Real CHAOS slices `ks` in a folder named `dicom` (as PACS exports name it), with header `changes`."""
    folder = dst / "dicom"
    folder.mkdir(parents=True)
    for f in sorted((shared / "ct/chaos_ct_sample/dicom").glob("*.dcm"))[ks.start : ks.stop]:
        ds = pydicom.dcmread(f)
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(folder / f.name)
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_overwrite_by_a_nifti_leaves_no_seg_of_the_earlier_patient(shared, tmp_path, model, capsys) -> None:
    first = _series(shared, tmp_path / "a", range(20, 60))
    out = tmp_path / "out"
    code, _, err = run_in_process(["infer", str(first), "--model", str(model), "--out", str(out)], capsys)
    assert code == 0, err
    case = out / "dicom"
    (case / "notes.txt").write_text("the reader's own file")  # not medseg's: left alone
    assert {"seg.dcm", "liver.nii.gz", "preview.png"} <= {p.name for p in case.iterdir()}
    nifti = tmp_path / "b" / "dicom.nii.gz"
    nifti.parent.mkdir()
    nifti.write_bytes((shared / "ct/chaos_ct_sample/image.nii.gz").read_bytes())
    code, _, err = run_in_process(["infer", str(nifti), "--model", str(model), "--out", str(out), "--overwrite"],
                                  capsys)  # fmt: skip
    assert code == 0, err
    names = {p.name for p in case.iterdir()}
    assert names == {"liver.nii.gz", "preview.png", "summary.json", "notes.txt"}, names
    summary = json.loads((case / "summary.json").read_text())
    assert summary["input"]["format"] == "nifti" and "seg" not in summary["outputs"]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_a_refused_input_with_overwrite_leaves_only_its_summary(shared, tmp_path, model, capsys) -> None:
    out = tmp_path / "out"
    ok = _series(shared, tmp_path / "a", range(20, 60))
    assert run_in_process(["infer", str(ok), "--model", str(model), "--out", str(out)], capsys)[0] == 0
    head = _series(shared, tmp_path / "b", range(20, 60), BodyPartExamined="HEAD", PatientName="OTHER^PATIENT")
    code, _, err = run_in_process(["infer", str(head), "--model", str(model), "--out", str(out), "--overwrite"],
                                  capsys)  # fmt: skip
    assert code == 5, err
    assert {p.name for p in (out / "dicom").iterdir()} == {"summary.json"}
    assert json.loads((out / "dicom" / "summary.json").read_text())["status"] == "qc_rejected"


@pytest.mark.disk_mb(4)
def test_an_overwrite_that_fails_on_a_full_disk_keeps_the_earlier_result(shared, tmp_path, model, capsys,
                                                                         small_disk) -> None:  # fmt: skip
    src = _series(shared, tmp_path / "a", range(20, 60))
    out = small_disk / "out"
    code, _, err = run_in_process(["infer", str(src), "--model", str(model), "--out", str(out)], capsys)
    assert code == 0, err
    before = _digests(out / "dicom")
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * max(free - 200_000, 0))  # room for a label map, not for a SEG
    other = _series(shared, tmp_path / "b", range(10, 70), PatientName="OTHER^PATIENT")
    code, _, err = run_in_process(["infer", str(other), "--model", str(model), "--out", str(out), "--overwrite"],
                                  capsys)  # fmt: skip
    assert code == 4, err
    assert "No space left on device" in err and "None" not in err
    assert _digests(out / "dicom") == before
    assert [p.name for p in out.iterdir()] == ["dicom"]


def test_outputs_get_the_mode_the_umask_gives(shared, tmp_path, model, capsys) -> None:
    """Not mkstemp's 0600: a pickup or forwarding account reads the results as the site's umask allows."""
    src = _series(shared, tmp_path / "a", range(30, 50))
    old = os.umask(0o027)
    try:
        code, _, err = run_in_process(["infer", str(src), "--model", str(model), "--out", str(tmp_path / "o")], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    case = tmp_path / "o" / "dicom"
    assert stat.S_IMODE(case.stat().st_mode) == 0o750
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in case.iterdir()} == dict.fromkeys(
        ["liver.nii.gz", "preview.png", "seg.dcm", "summary.json"], 0o640)  # fmt: skip


def test_an_out_that_is_a_file_is_a_usage_error_before_any_work(shared, tmp_path, model, capsys) -> None:
    src = _series(shared, tmp_path / "a", range(30, 40))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "dicom").write_text("x")
    code, _, err = run_in_process(["infer", str(src), "--model", str(model), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "is a file" in err, err
    assert (tmp_path / "o" / "dicom").read_text() == "x"


def _two_runs(shared: Path, tmp_path: Path, model: Path, capsys, monkeypatch, fault) -> tuple[Path, dict, int, str]:
    """A complete first run, then an --overwrite run of another patient with `fault` patched in while it commits."""
    out = tmp_path / "out"
    code, _, err = run_in_process(["infer", str(_series(shared, tmp_path / "a", range(20, 60))), "--model", str(model),
                                   "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    (out / "dicom" / "mine").mkdir()
    (out / "dicom" / "mine" / "a.txt").write_text("the reader's own folder")
    before = _digests(out / "dicom")
    fault(monkeypatch)
    other = _series(shared, tmp_path / "b", range(10, 70), PatientName="OTHER^PATIENT")
    code, _, err = run_in_process(["infer", str(other), "--model", str(model), "--out", str(out), "--overwrite",
                                   "--organ", "liver"], capsys)  # fmt: skip
    return out, before, code, err


def _failing_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg.io.atomic as atomic

    def exchange(a: Path, b: Path) -> bool:
        raise OSError(5, "Input/output error", str(b))

    monkeypatch.setattr(atomic, "_exchange", exchange)


def _failing_second_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RENAME_EXCHANGE (the two-rename fallback), and the rename of the new set into place fails."""
    import medseg.io.atomic as atomic

    real = os.rename
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)

    def rename(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".tmp-dicom-") and Path(dst).name == "dicom":
            raise OSError(5, "Input/output error", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "rename", rename)


@pytest.mark.parametrize("fault", [_failing_exchange, _failing_second_rename], ids=["exchange", "fallback"])
def test_an_overwrite_failing_while_committing_keeps_the_earlier_result_whole(shared, tmp_path, model, capsys,
                                                                             monkeypatch, fault) -> None:  # fmt: skip
    """The earlier set is swapped out whole or not at all: never the new label map beside the old SEG (a reviewer
    injected an I/O error between two per-file renames and got exactly that mix)."""
    out, before, code, err = _two_runs(shared, tmp_path, model, capsys, monkeypatch, fault)
    assert code == 4 and "Input/output error" in err, err
    assert _digests(out / "dicom") == before
    assert (out / "dicom" / "mine" / "a.txt").read_text() == "the reader's own folder"
    assert [p.name for p in out.iterdir()] == ["dicom"]


def test_an_overwrite_swaps_the_whole_set_and_keeps_the_readers_own_files(shared, tmp_path, model, capsys,
                                                                          monkeypatch) -> None:  # fmt: skip
    out, before, code, err = _two_runs(shared, tmp_path, model, capsys, monkeypatch, lambda mp: None)
    assert code == 0, err
    after = _digests(out / "dicom")
    assert set(after) == set(before) and all(after[n] != before[n] for n in ("seg.dcm", "liver.nii.gz"))
    assert pydicom.dcmread(out / "dicom" / "seg.dcm").PatientName == "OTHER^PATIENT"
    assert (out / "dicom" / "mine" / "a.txt").read_text() == "the reader's own folder"
    assert [p.name for p in out.iterdir()] == ["dicom"]


@pytest.mark.disk_mb(1)
def test_a_full_disk_while_the_seg_is_written_is_one_line_without_pydicoms_traceback(shared, tmp_path, model, capsys,
                                                                                     small_disk) -> None:  # fmt: skip
    """pydicom re-raises ENOSPC as a new OSError whose message is a traceback: a reviewer got it on stderr."""
    src = _series(shared, tmp_path / "a", range(20, 60))
    code, _, err = run_in_process(["infer", str(src), "--model", str(model), "--out", str(small_disk / "o")], capsys)
    assert code == 4, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(
        "cannot write output: No space left on device. Check free disk space and permissions"), err  # fmt: skip
    assert "Traceback" not in err and "With tag" not in err and "File " not in err
    assert [p.name for p in (small_disk / "o").iterdir()] == ["dicom"]  # no staging folder left
    summary = json.loads((small_disk / "o" / "dicom" / "summary.json").read_text())  # the record that it failed
    assert summary["status"] == "failed" and summary["exit_code"] == 4 and "No space left" in summary["failure"]
    assert [p.name for p in (small_disk / "o" / "dicom").iterdir()] == ["summary.json"]
