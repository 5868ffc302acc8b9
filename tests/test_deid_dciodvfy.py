"""dicom3tools' dciodvfy finds no new errors in de-identified files compared with their originals."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from medseg.deid.conformance import dciodvfy_baseline as baseline_errors
from medseg.deid.conformance import dciodvfy_errors as errors
from medseg.deid.keyed import KeyedMapper
from medseg.deid.runner import discover, input_digest
from tests.deid_fixtures import SECRET, corpus_runs, run_deid

FILES = (
    "dicom/pydicom/CT_small.dcm",
    "dicom/pydicom/MR_small.dcm",
    "dicom/mr_series_penn_prisma_phantom/6_anat_acq_vnavsetter_T1w_031.dcm",
    "dicom/dicom2nifti/philips_enhanced/anatomical/001/IM-0001-0170-0001.dcm",
    "dicom/highdicom/sr_document_with_multiple_groups.dcm",
    "dicom/highdicom/sm_annotations.dcm",
    "dicom/rtstruct/rt-utils/mock_data/rt.dcm",
    "dicom/seg/dcmqi/segmentations/liver.dcm",
    "deid/tcia_pseudo_phi_mr/original/1-01.dcm",
    "deid/deid_data/humans/ctbrain1.dcm",
)


@pytest.mark.parametrize("name", FILES)
def test_no_new_dciodvfy_errors(shared: Path, tmp_path: Path, name: str) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy (dicom3tools) is installed by scripts/setup.sh"
    src = tmp_path / "in"
    src.mkdir()
    original = shared / name
    (src / original.name).write_bytes(original.read_bytes())
    record = run_deid(src, tmp_path / "out").records[0]
    assert record.status in ("written", "quarantined")
    added = errors(tmp_path / "out" / record.output) - errors(original)
    assert not added, sorted(added)


@pytest.fixture(scope="session")
def corpus_run(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return corpus_runs(shared, tmp_path_factory)


@pytest.mark.slow
def test_no_new_dciodvfy_errors_in_any_output_of_the_corpus(corpus_run) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy (dicom3tools) is installed by scripts/setup.sh"
    compared, worse = 0, {}
    for name in ("deid", "dicom"):
        src, out, result = corpus_run[name]
        by_sha = {r.input_digest: r for r in result.records if r.status in ("written", "quarantined")}
        for path in discover(src).files:
            rec = by_sha.get(input_digest(KeyedMapper(SECRET), hashlib.sha256(path.read_bytes()).hexdigest()))
            if rec is None:
                continue
            compared += 1
            added = errors(out / rec.output) - baseline_errors(path, out.parent / "baseline.dcm")
            if added:
                worse[path.relative_to(src).as_posix()] = sorted(added)[:2]
    assert compared >= 300 and worse == {}, worse


def test_file_cut_inside_a_sequence_is_skipped_not_written(shared: Path, tmp_path: Path) -> None:
    """pydicom reads rtplan_truncated.dcm without a warning; dciodvfy cannot read it. It must not pass through."""
    src = tmp_path / "in"
    src.mkdir()
    data = (shared / "dicom" / "pydicom" / "rtplan.dcm").read_bytes()
    (src / "whole.dcm").write_bytes(data)
    (src / "cut.dcm").write_bytes((shared / "dicom" / "pydicom" / "rtplan_truncated.dcm").read_bytes())
    (src / "cut-here.dcm").write_bytes(data[: len(data) * 3 // 4])
    records = {r.input_digest: r for r in run_deid(src, tmp_path / "out").records}
    outcome = {
        p.name: records[input_digest(KeyedMapper(SECRET), hashlib.sha256(p.read_bytes()).hexdigest())]
        for p in src.iterdir()
    }
    assert outcome["whole.dcm"].status == "written"
    for name in ("cut.dcm", "cut-here.dcm"):
        assert outcome[name].status == "skipped" and "truncated" in outcome[name].reason, outcome[name]
