"""Send a SEG to the destination: C-STORE (pynetdicom SCU) or STOW-RS (DICOMweb)."""

from __future__ import annotations

import uuid
from pathlib import Path

from medseg.errors import ProcessingError
from medseg.pacs.config import Destination


class SendError(ProcessingError):
    """The destination did not accept the instance (down, refused, failure status); retried with backoff."""


def send(path: Path, dest: Destination, calling_ae: str) -> str:
    """Send one instance; returns a short description of the accepted response (naming a warning the destination
    gave: stored with a warning is stored), raises SendError otherwise."""
    if dest.folder is not None:
        return send_folder(path, dest.folder)
    return send_stow(path, dest) if dest.dicomweb else send_cstore(path, dest, calling_ae)


def send_folder(path: Path, folder: Path) -> str:
    """`medseg batch`: the SEG is written durably to FOLDER/<StudyUID>/<SOPUID>.dcm (same name on a re-run)."""
    import pydicom

    from medseg.pacs.storage import durable_write

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    target = Path(folder) / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    try:
        durable_write(target, path.read_bytes())
    except ProcessingError as exc:
        raise SendError(exc.message, path=target) from exc
    return str(target)


def send_cstore(path: Path, dest: Destination, calling_ae: str) -> str:
    """One association, one C-STORE; success or any status of the Warning category (PS3.4 B.2.3: 0001, 0107, 0116,
    B000, B006, B007...) counts as stored; a list of four codes did not, so a PACS answering 0107 (attribute list
    error, stored) got the SEG again and the job failed (review 18)."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.status import code_to_category

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_s
    ts = str(ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(ds.SOPClassUID, list(dict.fromkeys([ts, "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])))
    tls = None
    if dest.tls is not None:
        from medseg.pacs.tls import client_context

        tls = (client_context(dest.tls), dest.tls.server_name or str(dest.host))
    assoc = ae.associate(str(dest.host), int(dest.port or 0), ae_title=str(dest.ae_title), tls_args=tls)
    if not assoc.is_established:
        how = " over TLS (down, refused, or a certificate not trusted either way)" if tls else " (down or refused)"
        raise SendError(f"association with {dest.name} not established{how}")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    category = code_to_category(code) if code >= 0 else ""
    if category not in ("Success", "Warning"):
        raise SendError(f"C-STORE to {dest.name} answered status 0x{code & 0xFFFF:04X}" if code >= 0 else
                        f"C-STORE to {dest.name}: no response")  # fmt: skip
    if category == "Warning":
        return f"stored with a warning: C-STORE status 0x{code:04X}"
    return f"C-STORE status 0x{code:04X}"


def send_stow(path: Path, dest: Destination) -> str:
    """POST {dicomweb}/studies as multipart/related; 200, or 202 (stored with warnings, PS3.18 10.5.3), without a
    FailedSOPSequence counts as stored (202 was taken for a failure: POSTed again, then failed; review 18)."""
    import requests

    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    url = str(dest.dicomweb).rstrip("/") + "/studies"
    tls: dict[str, object] = {}
    if dest.tls is not None:
        tls["verify"] = str(dest.tls.trusted_certificates)
        if dest.tls.certificate is not None:
            tls["cert"] = (str(dest.tls.certificate), str(dest.tls.private_key))
    try:
        r = requests.post(url, data=body, headers=headers, timeout=dest.timeout_s, **tls)
    except requests.RequestException as exc:
        raise SendError(f"STOW-RS to {url} failed: {type(exc).__name__}") from exc
    if r.status_code not in (200, 202):
        raise SendError(f"STOW-RS to {url} answered HTTP {r.status_code}")
    try:
        reply = r.json()
    except ValueError:
        reply = {}
    if isinstance(reply, dict) and (reply.get("00081198") or {}).get("Value"):
        raise SendError(f"STOW-RS to {url}: the instance is in FailedSOPSequence")
    if r.status_code == 202:
        return f"stored with a warning: STOW-RS HTTP 202{_warning_reasons(reply)}"
    return "STOW-RS HTTP 200"


def _warning_reasons(reply: object) -> str:
    """' (WarningReason 0xB000, ...)' from a STOW-RS response's ReferencedSOPSequence, '' when it names none."""
    codes = []
    items = (reply.get("00081199") or {}).get("Value") or [] if isinstance(reply, dict) else []
    for item in items:
        for value in ((item or {}).get("00081196") or {}).get("Value") or []:
            codes.append(f"0x{int(value):04X}" if str(value).isdigit() else str(value))
    return f" (WarningReason {', '.join(codes)})" if codes else ""
