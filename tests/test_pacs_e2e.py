"""End to end against a real Orthanc: a real CT study sent with dcmtk storescu, segmented, one SEG in Orthanc."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import QUIET_S, Orthanc, Served, chaos_files, check_seg, make_study, storescu, wait_jobs, write_config

from medseg.pacs.queue import JobQueue

pytestmark = pytest.mark.slow  # real inference in a started service: 25-100 s each depending on load


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), medseg_port=11112).start()
    yield server
    server.stop()


def test_real_ct_through_cstore_gives_exactly_one_seg(orthanc: Orthanc, shared: Path, tmp_path: Path) -> None:
    orthanc.clear()
    src = shared / "ct" / "chaos_ct_sample" / "dicom"
    first = pydicom.dcmread(next(iter(sorted(src.glob("*.dcm")))), stop_before_pixels=True)
    dest = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom}
    write_config(tmp_path / "pacs.yaml", tmp_path / "store", dest, port=0)
    service = Served(tmp_path / "pacs.yaml", 0, tmp_path / "serve.log").start()
    try:
        sent = storescu(service.port, src)
        assert sent.returncode == 0, sent.stderr
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1)
    finally:
        service.stop()
    assert [j.state for j in jobs] == ["sent"], [(j.state, j.reason) for j in jobs]
    q = JobQueue(tmp_path / "store" / "queue.db")
    assert len(q.instances()) == 78 and len(q.ledger()) == 1
    seg = check_seg(orthanc, src, first.StudyInstanceUID, first.SeriesInstanceUID)
    assert seg.SOPInstanceUID == jobs[0].seg_sop_uid
    assert "stopped" in (tmp_path / "serve.log").read_text()


def test_small_study_through_stow_rs_gives_exactly_one_seg(orthanc: Orthanc, shared: Path, tmp_path: Path) -> None:
    orthanc.clear()
    study_dir = tmp_path / "study"
    study, series = make_study(chaos_files(shared), study_dir, range(24, 56), "stow")
    write_config(tmp_path / "pacs.yaml", tmp_path / "store", {"dicomweb": orthanc.url + "/dicom-web"}, port=0)
    service = Served(tmp_path / "pacs.yaml", 0, tmp_path / "serve.log").start()
    try:
        storescu(service.port, study_dir)
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1)
    finally:
        service.stop()
    assert [j.state for j in jobs] == ["sent"], [(j.state, j.reason) for j in jobs]
    check_seg(orthanc, study_dir, study, series)


def test_orthanc_pushing_a_study_to_medseg_gets_one_seg_back_even_when_it_pushes_twice(
    orthanc: Orthanc, shared: Path, tmp_path: Path
) -> None:
    """The PACS side as a site configures it: the study is in Orthanc, Orthanc sends it to the modality MEDSEG
    (its own C-STORE SCU, REST `/modalities/.../store`), and the SEG comes back into the same study. Orthanc sends it a
    second time (a user clicks twice, a routing rule fires again): the instances are duplicates, no second job, no
    second SEG."""
    import requests

    orthanc.clear()
    study_dir = tmp_path / "study"
    study, series = make_study(chaos_files(shared), study_dir, range(20, 52), "orthanc-push")
    orthanc_study = orthanc.upload(study_dir, study)
    dest = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom}
    write_config(tmp_path / "pacs.yaml", tmp_path / "store", dest, port=0)
    push = {"Resources": [orthanc_study], "Synchronous": True}
    service = Served(tmp_path / "pacs.yaml", 0, tmp_path / "serve.log").start()
    try:
        modality = {"AET": "MEDSEG", "Host": "127.0.0.1", "Port": service.port}
        assert requests.put(orthanc.url + "/modalities/medseg", json=modality, timeout=10).ok
        echo = requests.post(orthanc.url + "/modalities/medseg/echo", json={}, timeout=30)
        assert echo.ok, echo.text  # C-ECHO, what a site's "test the connection" button does
        first = requests.post(orthanc.url + "/modalities/medseg/store", json=push, timeout=120)
        assert first.ok, first.text
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1, settled=True)
        assert [j.state for j in jobs] == ["sent"], [(j.state, j.reason) for j in jobs]
        again = requests.post(orthanc.url + "/modalities/medseg/store", json=push, timeout=120)
        assert again.ok, again.text
        time.sleep(QUIET_S + 2.0)  # longer than the quiet time: a reopened study would have made a job by now
        jobs = wait_jobs(tmp_path / "store" / "queue.db", 1, settled=True)
    finally:
        service.stop()
    q = JobQueue(tmp_path / "store" / "queue.db")
    assert len(jobs) == 1 and len(q.ledger()) == 1
    stored = {i["sop_uid"] for i in q.instances()}
    assert len(stored) == 33 and jobs[0].seg_sop_uid in stored  # the 32 slices, and our SEG echoed: recorded only
    assert [s["generation"] for s in q.studies()] == [1]
    seg = check_seg(orthanc, study_dir, study, series)
    assert seg.SOPInstanceUID == jobs[0].seg_sop_uid
    series_in_study = requests.get(f"{orthanc.url}/studies/{orthanc_study}", timeout=10).json()["Series"]
    assert len(series_in_study) == 2  # the CT and its SEG, in the one study


def test_an_orthanc_routing_rule_on_stable_studies_does_not_loop_on_the_seg_it_gets_back(
    shared: Path, tmp_path: Path
) -> None:
    """The common site set-up, in Orthanc's own Lua: every stable study is sent to MEDSEG. medseg's SEG arriving in
    the study makes it stable again, so the rule sends the study (now with the SEG) once more. That second push
    must end the exchange: no second generation, no second SEG, nothing sent back that would fire the rule again."""
    import json


    study_dir = tmp_path / "study"
    study, series = make_study(chaos_files(shared), study_dir, range(24, 52), "orthanc-lua")
    server = Orthanc(tmp_path / "orthanc", medseg_port=0)
    dest = {"ae_title": server.aet, "host": "127.0.0.1", "port": server.dicom}
    port = write_config(tmp_path / "pacs.yaml", tmp_path / "store", dest)
    lua = tmp_path / "route.lua"
    # Orthanc 1.10's Lua SendToModality takes instances only (a study id fails: "Unable to read attachment"); the
    # REST route is how Orthanc's book sends a whole study from OnStableStudy
    lua.write_text(
        "function OnStableStudy(studyId, tags, metadata)\n  RestApiPost('/modalities/medseg/store', studyId)\nend\n"
    )
    cfg = json.loads(server.config.read_text())
    cfg["DicomModalities"]["medseg"][2] = port
    server.config.write_text(json.dumps(cfg | {"LuaScripts": [str(lua)], "StableAge": 2}))
    server.start()
    service = Served(tmp_path / "pacs.yaml", port, tmp_path / "serve.log").start()
    queue_path = tmp_path / "store" / "queue.db"
    try:
        server.upload(study_dir, study)
        jobs = wait_jobs(queue_path, 1, settled=True)
        seg_uid = jobs[0].seg_sop_uid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the rule's second push carries our SEG back
            if any(i["sop_uid"] == seg_uid for i in JobQueue(queue_path).instances()):
                break
            time.sleep(0.5)
        else:
            pytest.fail("Orthanc's rule never sent the study again after the SEG arrived")
        time.sleep(QUIET_S + 5.0)  # quiet time + stable age + slack: a loop would have made generation 2 by now
        jobs = wait_jobs(queue_path, 1, settled=True)
        service.stop()
        q = JobQueue(queue_path)
        assert [(j.generation, j.state) for j in jobs] == [(1, "sent")] and len(q.ledger()) == 1
        assert [s["generation"] for s in q.studies()] == [1]
        seg = check_seg(server, study_dir, study, series)
        assert seg.SOPInstanceUID == seg_uid
    finally:
        service.stop()
        server.stop()
