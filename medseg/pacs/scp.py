"""The C-STORE SCP: each instance is stored durably and recorded in the queue before success is answered."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.io.atomic import TEMPORARY_PREFIX
from medseg.pacs.config import PacsConfig
from medseg.pacs.queue import JobQueue
from medseg.pacs.storage import durable_write, fsync_dir, instance_path, study_lock

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]


def is_study_input(sop_class: str) -> bool:
    """Whether an instance of this SOP class can start or reopen a study: images (CT, MR, enhanced, secondary
    capture: "... Image Storage"), so a study of the wrong modality is still segmented and quarantined with its
    reason. Derived objects (a SEG, a structured report, a presentation state, an RT structure set, and medseg's own
    SEG echoed back by the PACS) and unknown classes are stored and recorded only: a PACS routing rule that sends the
    whole study again once medseg's SEG arrived in it cannot make a feedback loop of new generations."""
    from pydicom.uid import UID

    return UID(sop_class).name.endswith("Image Storage")


def content_digest(data: bytes) -> str:
    """SHA-256 of an encoded instance's content, the same whatever little-endian transfer syntax carried it.

    Each element (file meta left out) counts as its tag and its value's bytes as encoded (identical in implicit and
    explicit VR little endian); sequences are walked item by item, so defined or undefined lengths and the nested VR
    encoding do not count. The same instances forwarded by a PACS as explicit instead of implicit VR are then
    duplicates, not a changed study segmented again under the same SEG UIDs (review 18). Not the same: big endian,
    another compression of the pixel data, a private sequence in implicit VR (read as bytes): counted as changed."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    digest = hashlib.sha256()
    _feed(digest, ds)
    return digest.hexdigest()


def _feed(digest: Any, ds: Any) -> None:
    """Add each element of `ds` (tag, then value bytes or its items) to `digest`, in tag order."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement

    for tag in sorted(ds.keys()):
        elem = ds.get_item(tag)
        digest.update(int(tag).to_bytes(4, "little"))
        raw = isinstance(elem, RawDataElement)
        vr = elem.VR or (dictionary_VR(tag) if _known(tag) else "")  # implicit VR: the dictionary's
        if vr == "SQ":
            items = ds[tag].value
            digest.update(b"SQ" + len(items).to_bytes(4, "little"))
            for item in items:
                digest.update(b"IT")
                _feed(digest, item)
            continue
        value = elem.value if raw else str(elem.value).encode()
        value = b"" if value is None else bytes(value)
        digest.update(len(value).to_bytes(8, "little") + value)


def _known(tag: Any) -> bool:
    """Whether pydicom's dictionary knows the (public) tag."""
    from pydicom.datadict import dictionary_has_tag

    return bool(dictionary_has_tag(tag))


@dataclass(frozen=True)
class StoreOutcome:
    """The status answered for one C-STORE and why (for the log and the tests)."""

    status: int
    detail: str


def store_instance(
    data: bytes, sop_uid: str, calling_ae: str, root: Path, queue: JobQueue, quiet_s: float, min_free_mb: float = 0.0
) -> StoreOutcome:
    """Store one encoded instance (with file meta) and record it; the status to answer the sender."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_TAGS)
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        meta = getattr(ds, "file_meta", None)  # from the C-STORE request's Affected SOP Class (pynetdicom)
        sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
        path = instance_path(root, study, series, sop_uid)
    except (MedsegError, AttributeError, ValueError, pydicom.errors.InvalidDicomError) as exc:
        return StoreOutcome(CANNOT_UNDERSTAND, f"unreadable header ({type(exc).__name__})")
    try:
        content: str | None = content_digest(data)
    except Exception:  # a damaged body (truncated pixel data): stored as before, quarantined by its job with the
        content = None  # pipeline's reason; compared by its bytes only
    if min_free_mb and shutil.disk_usage(root).free < min_free_mb * 1e6 + len(data):
        return StoreOutcome(OUT_OF_RESOURCES, "storage below min_free_mb")
    try:
        with study_lock(study), _undone_unless_recorded(path):
            durable_write(path, data)
            got = queue.record_instance(
                sop_uid, study, series, str(path), hashlib.sha256(data).hexdigest(), len(data), quiet_s, calling_ae,
                reopens=is_study_input(sop_class), content=content,
            )
    except MedsegError as exc:  # DiskFull, QueueGone, a write error: the message names no file (no UID)
        return StoreOutcome(OUT_OF_RESOURCES, exc.message)
    except Exception as exc:  # sqlite3 errors (disk full on the queue, locked) and the like: refuse, never pretend
        return StoreOutcome(OUT_OF_RESOURCES, f"the queue cannot record it: {type(exc).__name__}: {exc}")
    return StoreOutcome(SUCCESS, got.outcome)


@contextlib.contextmanager
def _undone_unless_recorded(path: Path) -> Iterator[None]:
    """Around writing and recording one instance: when the block fails (the queue could not record it, the sender is
    answered A700), the file it wrote is removed, or the earlier file it replaced put back, so nothing the sender was
    told failed becomes a job's input (review 19). The earlier file is kept aside as a hard link under a temporary
    name (`sweep_unfinished_writes` removes one a kill left)."""
    aside = path.with_name(f"{TEMPORARY_PREFIX}{path.name}-previous")
    kept = False
    with contextlib.suppress(FileNotFoundError):
        aside.unlink()
    with contextlib.suppress(FileNotFoundError):
        os.link(path, aside)
        kept = True
    try:
        yield
    except BaseException:
        if kept:
            os.replace(aside, path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)
        raise
    if kept:
        aside.unlink()


class Receiver:
    """A pynetdicom storage SCP (plus C-ECHO) bound to the configured AE title, host and port."""

    def __init__(self, config: PacsConfig, queue: JobQueue, on_event: Callable[[str], None] = lambda _m: None) -> None:
        self.config = config
        self.queue = queue
        self.on_event = on_event
        self.server: Any = None
        self.outcomes: dict[str, int] = {}

    def _on_store(self, event: Any) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)
        calling = str(event.assoc.requestor.ae_title).strip()
        out = store_instance(
            event.encoded_dataset(include_meta=True), sop, calling, self.config.storage, self.queue,
            self.config.completion.quiet_seconds, self.config.min_free_mb,
        )  # fmt: skip
        key = "stored" if out.status == SUCCESS else "refused"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if out.status != SUCCESS:
            self._refused(calling, out)
        return out.status

    def _refused(self, calling: str, out: StoreOutcome) -> None:
        """One log line per refused C-STORE (status, calling AE title, short reason: no UID, no patient data) and
        the persisted count `pacs status` shows; a refusal used to leave no trace on medseg's side (review 19)."""
        self.on_event(f"C-STORE from {calling} refused: {out.status:04X} ({out.detail})")
        try:
            self.queue.count_refusal(out.status, out.detail)
        except Exception as exc:  # the queue itself is what failed: the log line above is the trace
            self.on_event(f"C-STORE refusal not counted: {type(exc).__name__}")

    def start(self) -> int:
        """Start listening (in background threads); returns the bound port."""
        from pydicom.uid import AllTransferSyntaxes
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        listen = self.config.listen
        ae = AE(ae_title=listen.ae_title)
        ae.require_called_aet = listen.check_called_aet
        ae.require_calling_aet = list(listen.allowed_callers)
        ae.maximum_pdu_size = 0
        ae.network_timeout = 60
        ae.maximum_associations = listen.max_associations
        ae.acse_timeout = listen.association_timeout_s  # also the ARTIM timer: a connection that never sends a request
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, list(AllTransferSyntaxes))
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        tls = None
        if listen.tls is not None:
            from medseg.pacs.tls import server_context

            tls = server_context(listen.tls)
            tls.handshake_timeout_s = listen.association_timeout_s  # type: ignore[attr-defined]
        self.server = ae.start_server((listen.host, listen.port), block=False, evt_handlers=handlers, ssl_context=tls)
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop accepting associations and close the listening socket."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

