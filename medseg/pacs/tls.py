"""DICOM TLS (PS3.15 Annex B secure transport) for the service's two links: the C-STORE SCP that receives studies and
the C-STORE SCU that sends SEGs. Python's `ssl` makes the contexts (pynetdicom takes them as they are); both sides
authenticate with X.509 certificates, TLS 1.2 or newer as BCP 195 asks, and every file is checked when the service
starts, so a wrong path, a key that does not match its certificate or an expired certificate stops it with exit 2
instead of failing every association later."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from medseg.errors import UsageError


class TlsFiles(BaseModel):
    """PEM files of one side: its own certificate (chain) and private key, and the certificates it trusts for the peer.

    `listen.tls` needs all three: only peers with a certificate signed by a trusted one may connect (mutual TLS).
    `destination.tls` needs `trusted_certificates` (the PACS's certificate is verified, and its name checked against
    `server_name`, default the destination's host); `certificate` and `private_key` are sent when the PACS asks for a
    client certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    certificate: Path | None = None
    private_key: Path | None = None
    trusted_certificates: Path
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsFiles:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give certificate and private_key together")
        return self

    @property
    def paths(self) -> dict[str, Path]:
        """The files given, by key (relative ones are made absolute by the config loader)."""
        keys = ("certificate", "private_key", "trusted_certificates")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class _DeferredHandshake(ssl.SSLContext):
    """A server context whose handshake runs in the association's own thread, with a deadline.

    pynetdicom wraps each accepted socket in its accept loop, and Python's default handshake there blocks that loop:
    one client that connects and never finishes the handshake would stop the SCP accepting anyone (the bug fo-dicom
    #1766 and dcm4che #939 report for their listeners). Here the accept returns at once; the handshake happens on the
    association's first read, bounded by `handshake_timeout_s`."""

    handshake_timeout_s: float = 30.0

    def wrap_socket(self, sock, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        sock.settimeout(self.handshake_timeout_s)
        return super().wrap_socket(sock, *args, **(kwargs | {"do_handshake_on_connect": False}))


def _context(protocol: int, files: TlsFiles, where: str) -> ssl.SSLContext:
    """Only the configured certificates are trusted (never the system's store): a certificate from any public CA
    must not be enough to send studies to the service or to receive its SEGs."""
    ctx = _DeferredHandshake(protocol) if protocol == ssl.PROTOCOL_TLS_SERVER else ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for key, path in files.paths.items():
        if not Path(path).is_file():
            raise UsageError(f"{where}.{key}: no such file", path=path, hint="Give a PEM file readable by the service.")
    try:
        ctx.load_verify_locations(cafile=str(files.trusted_certificates))
    except (ssl.SSLError, OSError, ValueError) as exc:
        hint = "Give the peers' CA or self-signed certificates, PEM, concatenated."
        message = f"{where}.trusted_certificates: not PEM certificates ({exc})"
        raise UsageError(message, path=files.trusted_certificates, hint=hint) from exc
    _check_trusted_dates(files.trusted_certificates, f"{where}.trusted_certificates")
    if files.certificate is not None:
        _check_dates(files.certificate, f"{where}.certificate")
        try:
            ctx.load_cert_chain(str(files.certificate), str(files.private_key))
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"{where}: the certificate and private_key do not load together ({exc})",
                             path=files.certificate, hint="Check that the key belongs to the certificate and is "
                             "not encrypted.") from exc  # fmt: skip
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _check_dates(path: Path, where: str) -> None:
    """Refuse a certificate outside its validity period: every handshake with it would fail."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError as exc:
        raise UsageError(f"{where}: not a PEM certificate ({exc})", path=path) from exc
    _check_validity(cert, path, where, "the certificate")


def _check_trusted_dates(path: Path, where: str) -> None:
    """Refuse trusted certificates of which one is outside its validity period: a peer chained to an expired CA is
    refused at every handshake, so the service would start and take nothing (review 19)."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except ValueError as exc:
        raise UsageError(f"{where}: not PEM certificates ({exc})", path=path) from exc
    for n, cert in enumerate(certs, start=1):
        subject = cert.subject.rfc4514_string() or f"number {n}"
        _check_validity(cert, path, where, f"trusted certificate {subject}")


def _check_validity(cert: object, path: Path, where: str, what: str) -> None:
    """UsageError naming `where` and `what` when `cert` (an x509.Certificate) is expired or not yet valid."""
    now = dt.datetime.now(dt.UTC)
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc  # type: ignore[attr-defined]
    if now > after:
        raise UsageError(f"{where}: {what} expired on {after:%Y-%m-%d}", path=path, hint="Renew it.")
    if now < before:
        raise UsageError(f"{where}: {what} is valid only from {before:%Y-%m-%d %H:%M} UTC", path=path,
                         hint="Check the clock or the certificate.")  # fmt: skip


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The SCP's context: its certificate, and a client certificate required and verified against the trusted ones."""
    if files.certificate is None:
        raise UsageError("listen.tls: certificate and private_key are required to listen with TLS")
    return _context(ssl.PROTOCOL_TLS_SERVER, files, "listen.tls")


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The SCU's context: the destination's certificate verified against the trusted ones, its name checked."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, files, "destination.tls")
    ctx.check_hostname = True
    return ctx


def peer_subject(sock: object) -> str:
    """The common name of the verified peer certificate on a TLS socket ('' for a plain socket), for the log."""
    cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""
