"""A throw-away PKI for the DICOM TLS tests: a site CA, certificates it signs for the service, a PACS and a client,
and a second, untrusted CA with its own client, all PEM files in one folder (RSA 2048, as DCMTK's BCP 195 profile
accepts)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, PEM files."""

    cert: Path
    key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> Pair:
    pair = Pair(folder / f"{stem}.crt", folder / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))  # fmt: skip
    return pair


def make_ca(folder: Path, cn: str) -> tuple[Pair, x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed CA certificate valid from yesterday for a year."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return _write(folder, cn.lower(), cert, key), cert, key


def issue(folder: Path, stem: str, cn: str, ca: tuple[x509.Certificate, rsa.RSAPrivateKey],
          days: tuple[int, int] = (-1, 365)) -> Pair:  # fmt: skip
    """A certificate for `cn` (also named localhost and 127.0.0.1) signed by `ca`, for servers and clients alike;
    `days` is its validity window relative to now."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca[0].subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1])).add_extension(san, critical=False)
        .add_extension(usage, critical=False).add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(ca[1], hashes.SHA256())
    )  # fmt: skip
    return _write(folder, stem, cert, key)


@dataclass(frozen=True)
class Pki:
    """The site CA and what it signed; `rogue` is a client signed by another CA that nobody trusts."""

    ca: Path
    service: Pair
    pacs: Pair
    client: Pair
    rogue: Pair
    expired: Pair


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    site, site_cert, site_key = make_ca(folder, "SITE-CA")
    _, rogue_cert, rogue_key = make_ca(folder, "ROGUE-CA")
    signed = (site_cert, site_key)
    return Pki(
        ca=site.cert,
        service=issue(folder, "medseg", "medseg", signed),
        pacs=issue(folder, "pacs", "pacs", signed),
        client=issue(folder, "modality", "modality", signed),
        rogue=issue(folder, "rogue", "rogue", (rogue_cert, rogue_key)),
        expired=issue(folder, "expired", "expired", signed, days=(-30, -1)),
    )
