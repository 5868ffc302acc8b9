"""End to end against a real Orthanc: a real CT study sent with dcmtk storescu, segmented, one SEG in Orthanc."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pacs_helpers import Orthanc, Served, chaos_files, make_study, storescu, wait_jobs, write_config

from medseg.pacs.queue import JobQueue


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), medseg_port=11112).start()
    yield server
    server.stop()


def _check_seg(orthanc: Orthanc, source_dir: Path, study: str, series: str) -> pydicom.Dataset:
    """Exactly one SEG; it references the source series and each frame sits exactly on its source slice."""
    import highdicom as hd

    ids = orthanc.seg_instances()
    assert len(ids) == 1, ids
    assert len(orthanc.seg_series()) == 1
    seg = hd.seg.segread(io.BytesIO(orthanc.instance_file(ids[0])))
    assert seg.StudyInstanceUID == study
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert seg.SeriesInstanceUID.startswith("2.25.") and seg.SOPInstanceUID.startswith("2.25.")
    sources = {}
    for f in source_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sources[ds.SOPInstanceUID] = np.asarray(ds.ImagePositionPatient, dtype=float)
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} <= set(
        sources
    )
    assert seg.number_of_frames > 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        assert np.abs(pos - sources[ref]).max() < 1e-3
    assert seg.get_segment_description(1).segment_label == "liver"
    return seg


def test_real_ct_through_cstore_gives_exactly_one_seg(orthanc: Orthanc, shared: Path, tmp_path: Path) -> None:
    orthanc.clear()
    src = shared / "ct" / "chaos_ct_sample" / "dicom"
    first = pydicom.dcmread(next(iter(sorted(src.glob("*.dcm")))), stop_before_pixels=True)
    dest = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom}
    port = write_config(tmp_path / "pacs.yaml", tmp_path / "store", dest)
    service = Served(tmp_path / "pacs.yaml", port, tmp_path / "serve.log").start()
    try:
        sent = storescu(port, src)
        assert sent.returncode == 0, sent.stderr
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1)
    finally:
        service.stop()
    assert [j.state for j in jobs] == ["sent"], [(j.state, j.reason) for j in jobs]
    q = JobQueue(tmp_path / "store" / "queue.db")
    assert len(q.instances()) == 78 and len(q.ledger()) == 1
    seg = _check_seg(orthanc, src, first.StudyInstanceUID, first.SeriesInstanceUID)
    assert seg.SOPInstanceUID == jobs[0].seg_sop_uid
    assert "stopped" in (tmp_path / "serve.log").read_text()


def test_small_study_through_stow_rs_gives_exactly_one_seg(orthanc: Orthanc, shared: Path, tmp_path: Path) -> None:
    orthanc.clear()
    study_dir = tmp_path / "study"
    study, series = make_study(chaos_files(shared), study_dir, range(24, 56), "stow")
    port = write_config(tmp_path / "pacs.yaml", tmp_path / "store", {"dicomweb": orthanc.url + "/dicom-web"})
    service = Served(tmp_path / "pacs.yaml", port, tmp_path / "serve.log").start()
    try:
        storescu(port, study_dir)
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1)
    finally:
        service.stop()
    assert [j.state for j in jobs] == ["sent"], [(j.state, j.reason) for j in jobs]
    _check_seg(orthanc, study_dir, study, series)
