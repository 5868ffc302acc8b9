"""Batch runs: case n+1 is read and preprocessed in the background while case n runs the network; results are
the same as one case at a time, a failing read fails only its own case, and the warnings state is left intact."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from infer_fixtures import make_model_folder

from medseg.cli.main import main
from medseg.errors import InvalidInputError
from medseg.infer.batch import Prefetcher, progress_for
from medseg.infer.cases import Case
from medseg.infer.predict import model_input
from medseg.io import read_image, read_nifti
from medseg.models.registry import resolve_model


def write_study(src: Path, dst: Path, keep: range, skip: int | None = None) -> None:
    """Copies of real CT slices `keep` (minus `skip`) as a new study: fresh Study/Series/SOP UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    files = sorted(src.iterdir())
    study, series = generate_uid(), generate_uid()
    dst.mkdir(parents=True)
    for k in keep:
        if k == skip:
            continue
        ds = pydicom.dcmread(files[k])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / files[k].name)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model"), seed=1, roi=(64, 64, 64), foreground_bias=1000.0)


@pytest.fixture(scope="module")
def card(model):
    return resolve_model(str(model), "liver").card


def _volume_case(name: str, volume, log: list[tuple[str, str]]) -> Case:
    def load():
        log.append((name, threading.current_thread().name))
        if volume is None:
            raise InvalidInputError("missing slice between 3 and 5", path=Path(name))
        return volume

    return Case(name, Path(name), "nifti", load)


def _drive(prefetcher: Prefetcher) -> dict[str, object]:
    """Run the batch the way the CLI does, without the network: load, progress to the end, settle."""
    seen: dict[str, object] = {}
    for n, case in prefetcher:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                volume = case.load()
            except InvalidInputError as exc:
                seen[case.name] = exc
                prefetcher.settle(n)
                continue
            prepared = case.prepared()
            progress = progress_for(prefetcher, n, lambda done, total: None)
            for done in (1, 2, 3):
                progress(done, 3)
                warnings.warn(f"case {case.name} step {done}", UserWarning, stacklevel=1)
            seen[case.name] = (volume, prepared, [str(w.message) for w in caught])
        prefetcher.settle(n)
    return seen


def test_prefetcher_reads_ahead_in_order_and_isolates_failures(shared, card):
    volume = read_image(shared / "ct/chaos_ct_sample/dicom")
    log: list[tuple[str, str]] = []
    cases = [_volume_case(n, v, log) for n, v in (("a", volume), ("bad", None), ("c", volume), ("d", volume))]
    filters_before, show_before = warnings.filters, warnings.showwarning
    prefetcher = Prefetcher(cases, card)
    try:
        seen = _drive(prefetcher)
    finally:
        prefetcher.close()
    assert warnings.filters is filters_before and warnings.showwarning is show_before
    assert [name for name, _ in log] == ["a", "bad", "c", "d"]
    ahead = [name for name, thread in log if thread.startswith("medseg-read-ahead")]
    assert ahead == ["bad", "d"]  # a is first; c follows a case that failed before its network started
    assert isinstance(seen["bad"], InvalidInputError) and "missing slice" in str(seen["bad"])
    expected = model_input(volume, card)
    assert seen["a"][1] is None and seen["c"][1] is None  # made in the foreground by predict_labels
    _, prepared, _ = seen["d"]
    np.testing.assert_array_equal(prepared.image, expected.image)
    assert prepared.grid.shape == expected.grid.shape
    for name in ("a", "c", "d"):
        assert seen[name][0] is volume
        assert seen[name][2] == [f"case {name} step {k}" for k in (1, 2, 3)]  # each case records its own warnings


@pytest.fixture
def run(monkeypatch, tmp_path_factory, capsys):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))

    def invoke(*args: object) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(["--log-json", *[str(a) for a in args]])
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return invoke


@pytest.mark.slow
def test_batch_of_studies_matches_single_runs_and_goes_on_after_a_failure(shared, tmp_path, run, model):
    src = shared / "ct/chaos_ct_sample/dicom"
    batch = tmp_path / "batch"
    write_study(src, batch / "s1", range(10, 40))
    write_study(src, batch / "s2", range(20, 50), skip=30)  # a missing slice: refused when it is read
    write_study(src, batch / "s3", range(30, 60))
    write_study(src, batch / "s4", range(40, 70))
    code, out, err = run("infer", batch, "--model", model, "--out", tmp_path / "o", "--no-preview")
    assert code == 3, err
    events = {e["case"]: e for e in (json.loads(line) for line in err.splitlines() if '"case_done"' in line)}
    assert {c: e["status"] for c, e in events.items()} == {"s1": "flagged", "s2": "failed", "s3": "flagged",
                                                           "s4": "flagged"}  # fmt: skip
    assert "missing slice" in events["s2"]["error"] and "1 failed of 4" in out
    failed = json.loads((tmp_path / "o" / "s2" / "summary.json").read_text())  # counted by post-market monitoring
    assert failed["status"] == "failed" and failed["exit_code"] == 3 and failed["qc"]["passed"] is False
    assert failed["failure"] == events["s2"]["error"] and failed["outputs"] == {}
    assert sorted(p.name for p in (tmp_path / "o" / "s2").iterdir()) == ["summary.json"]
    for study in ("s1", "s3", "s4"):
        code, _, err = run("infer", batch / study, "--model", model, "--out", tmp_path / "single", "--no-preview")
        assert code == 0, err
        alone = read_nifti(tmp_path / "single" / study / "liver.nii.gz")
        batched = read_nifti(tmp_path / "o" / study / "liver.nii.gz")
        np.testing.assert_array_equal(batched.array, alone.array)
        assert batched.geometry.same_grid(alone.geometry, tol_mm=1e-6)
