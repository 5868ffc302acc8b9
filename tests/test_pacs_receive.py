"""The C-STORE SCP: every acknowledged instance is on disk and recorded; duplicates; disk full refuses cleanly."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import chaos_files, free_port, make_study, storescu

from medseg.pacs.config import PacsConfig
from medseg.pacs.queue import JobQueue
from medseg.pacs.scp import OUT_OF_RESOURCES, Receiver
from medseg.pacs.service import complete_studies
from medseg.pacs.storage import study_dir


def _receiver(storage: Path, quiet: float = 0.5) -> tuple[Receiver, JobQueue, int]:
    config = PacsConfig(
        listen={"ae_title": "MEDSEG", "host": "127.0.0.1", "port": free_port()},
        storage=storage, destination={"folder": str(storage / "out")}, completion={"quiet_seconds": quiet},
    )  # fmt: skip
    queue = JobQueue(config.queue_path)
    receiver = Receiver(config, queue)
    return receiver, queue, receiver.start()


def _send_each(port: int, files: list[Path]) -> list[int]:
    """C-STORE each file in one association (pynetdicom SCU); the status of each."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    assoc.release()
    return statuses


def test_received_study_is_on_disk_recorded_and_completes_once(shared: Path, tmp_path: Path) -> None:
    study_src = tmp_path / "src"
    study, series = make_study(chaos_files(shared), study_src, range(30, 40), "recv")
    receiver, queue, port = _receiver(tmp_path / "store")
    try:
        done = storescu(port, study_src)
        assert done.returncode == 0, done.stderr
        again = storescu(port, study_src)  # the same study sent twice
        assert again.returncode == 0
    finally:
        receiver.stop()
    rows = queue.instances(study)
    assert len(rows) == 10 and receiver.outcomes == {"stored": 20}
    for row in rows:
        path = Path(str(row["path"]))
        assert path.parent.parent == study_dir(tmp_path / "store", study)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
        assert pydicom.dcmread(path).SeriesInstanceUID == series
    assert not list((tmp_path / "store").rglob(".tmp-*"))
    time.sleep(0.6)
    config = receiver.config
    assert len(complete_studies(config, queue)) == 1
    assert complete_studies(config, queue) == []
    assert [j.input for j in queue.jobs()] == [str(study_dir(config.storage, study))]


def test_completion_deadline_survives_a_restart(shared: Path, tmp_path: Path) -> None:
    study_src = tmp_path / "src"
    make_study(chaos_files(shared), study_src, range(30, 33), "restart")
    receiver, queue, port = _receiver(tmp_path / "store", quiet=1.0)
    storescu(port, study_src)
    receiver.stop()
    queue.close()
    reopened = JobQueue(tmp_path / "store" / "queue.db")  # a new process would see the same deadline
    deadline = reopened.next_deadline()
    assert deadline is not None and deadline > time.time() - 5
    time.sleep(max(0.0, deadline - time.time()) + 0.05)
    assert len(complete_studies(receiver.config, reopened)) == 1


def test_unreadable_header_is_refused(tmp_path: Path) -> None:
    from medseg.pacs.scp import CANNOT_UNDERSTAND, store_instance

    queue = JobQueue(tmp_path / "q.db")
    out = store_instance(b"\0" * 200, "1.2.3", "X", tmp_path, queue, 1.0)
    assert out.status == CANNOT_UNDERSTAND
    assert queue.instances() == [] and not (tmp_path / "studies").exists()


def test_disk_full_refuses_the_store_and_leaves_nothing_half_written(
    shared: Path, tmp_path: Path, small_disk: Path
) -> None:
    study_src = tmp_path / "src"
    make_study(chaos_files(shared), study_src, range(30, 42), "full")
    receiver, queue, port = _receiver(small_disk / "store")
    try:
        statuses = _send_each(port, sorted(study_src.glob("*.dcm")))
    finally:
        receiver.stop()
    assert 0x0000 in statuses and OUT_OF_RESOURCES in statuses, statuses
    first_refusal = statuses.index(OUT_OF_RESOURCES)
    assert all(s == 0 for s in statuses[:first_refusal])
    stored = [p for p in (small_disk / "store" / "studies").rglob("*") if p.is_file()]
    assert not [p for p in stored if p.name.startswith(".tmp-")]
    recorded = {str(r["path"]) for r in queue.instances()}
    assert recorded == {str(p) for p in stored}
    assert len(recorded) == statuses.count(0)
    for p in stored:
        assert pydicom.dcmread(p).pixel_array.shape == (512, 512)


def _encoded(shared: Path, study: str, sop_class: str, sop: str) -> bytes:
    """A real CHAOS slice re-labelled into `study` with the given SOP class and instance UID, as a C-STORE delivers
    it (file meta from the request)."""
    import io

    ds = pydicom.dcmread(chaos_files(shared)[40])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID = study, study + ".7", sop, sop_class
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_results_sent_back_never_start_reopen_or_delay_a_study(shared: Path, tmp_path: Path) -> None:
    """A PACS rule that sends the whole study again once medseg's SEG arrived in it (Orthanc's "stable study" route,
    a user's second click) must not make a new generation each time: only CT image instances are study input."""
    from medseg.pacs.scp import SUCCESS, store_instance

    seg_class, sr_class = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.33"
    ct_class = "1.2.840.10008.5.1.4.1.1.2"
    queue = JobQueue(tmp_path / "q.db")
    study = "1.2.826.0.1.3680043.10.1.1"
    echo = store_instance(_encoded(shared, study, seg_class, study + ".9"), study + ".9", "PACS", tmp_path, queue, 0.0)
    assert (echo.status, echo.detail) == (SUCCESS, "not input")
    assert queue.complete_due() == [] and queue.studies()[0]["state"] == "complete"  # no job for a SEG alone
    ct = store_instance(_encoded(shared, study, ct_class, study + ".1"), study + ".1", "PACS", tmp_path, queue, 0.0)
    assert (ct.status, ct.detail) == (SUCCESS, "new")
    (job,) = queue.complete_due()
    for n, cls in enumerate((seg_class, sr_class), start=91):
        out = store_instance(_encoded(shared, study, cls, f"{study}.{n}"), f"{study}.{n}", "PACS", tmp_path, queue, 0.0)
        assert (out.status, out.detail) == (SUCCESS, "not input")
    assert queue.complete_due() == [] and [s["generation"] for s in queue.studies()] == [job.generation]
    assert len(queue.instances(study)) == 4 and queue.studies()[0]["state"] == "complete"
    late = store_instance(_encoded(shared, study, ct_class, study + ".2"), study + ".2", "PACS", tmp_path, queue, 0.0)
    assert late.detail == "new" and [j.generation for j in queue.complete_due()] == [job.generation + 1]


def test_study_input_is_every_image_class_and_no_derived_object() -> None:
    """Pinned against pydicom's UID dictionary: each storage class named "... Image Storage" is input (a wrong
    modality is still quarantined with its reason), each SEG, SR, presentation state, RT or document class is not."""
    from pydicom._uid_dict import UID_dictionary

    from medseg.pacs.scp import is_study_input

    storage = {uid: v[0] for uid, v in UID_dictionary.items() if v[1] == "SOP Class" and v[0].endswith("Storage")}
    images = {uid for uid, name in storage.items() if name.endswith("Image Storage")}
    assert {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4"} <= images
    assert all(is_study_input(uid) for uid in images)
    derived = {uid for uid, name in storage.items()
               if any(k in name for k in ("Segmentation", " SR ", "Presentation State", "RT Structure", "Encapsulated",
                                          "Key Object"))}  # fmt: skip
    assert len(derived) > 20 and not any(is_study_input(uid) for uid in derived)
    assert not is_study_input("1.3.12.2.1107.5.9.1") and not is_study_input("")  # private or missing: not input


def test_only_the_configured_callers_and_called_ae_title_are_accepted(shared: Path, tmp_path: Path) -> None:
    """An SCP on a hospital network accepts the PACS it is configured for, not any sender: a wrong calling AE title
    (when `allowed_callers` is set) or a wrong called AE title is rejected at association, and nothing is stored."""
    study_src = tmp_path / "study"
    make_study(chaos_files(shared), study_src, range(30, 33), "callers")
    listen = {"ae_title": "MEDSEG", "host": "127.0.0.1", "port": free_port(), "allowed_callers": ["PACS1", "ORTHANC"]}
    config = PacsConfig(listen=listen, storage=tmp_path / "store", destination={"folder": str(tmp_path / "out")})
    queue = JobQueue(config.queue_path)
    receiver = Receiver(config, queue)
    port = receiver.start()
    try:
        stranger = storescu(port, study_src, calling="STRANGER", check=False)
        wrong_called = storescu(port, study_src, aet="OTHERAE", calling="PACS1", check=False)
        assert stranger.returncode != 0 and wrong_called.returncode != 0
        assert "rejected" in (stranger.stderr + stranger.stdout).lower()
        assert queue.instances() == [] and not (config.storage / "studies").exists()
        assert storescu(port, study_src, calling="PACS1").returncode == 0
    finally:
        receiver.stop()
    assert len(queue.instances()) == 3 and {i["calling_ae"] for i in queue.instances()} == {"PACS1"}


def test_an_ae_title_list_with_a_bad_title_is_a_config_error(tmp_path: Path) -> None:
    from pydantic import ValidationError

    for bad in (["A" * 17], [""], ["PACS\\1"]):
        with pytest.raises(ValidationError, match="not a valid AE title"):
            PacsConfig(listen={"allowed_callers": bad}, storage=tmp_path, destination={"folder": str(tmp_path)})
