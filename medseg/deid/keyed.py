"""Keyed, deterministic replacements: UIDs, pseudonyms and per-patient date shifts (HMAC-SHA256 of a secret).

The same secret and input always give the same output, so a series de-identified in two runs stays one series;
without the secret the mapping cannot be reversed or recomputed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass

STANDARD_UID_ROOT = "1.2.840.10008."


def registered_uid(uid: str) -> bool:
    """A UID the standard registers (PS3.6 Annex A: classes, transfer syntaxes, well-known instances, as pydicom's
    UID dictionary lists them). Anything else under 1.2.840.10008, such as an instance UID a site made up there, is
    not the standard's and identifies like any other UID."""
    from pydicom._uid_dict import UID_dictionary

    return uid in UID_dictionary
MAX_SHIFT_DAYS = 3650
PSEUDONYM_PREFIX = "ANON"


@dataclass(frozen=True)
class Shift:
    """A date shift: whole days back in time plus seconds back (applied to date-time pairs together)."""

    days: int
    seconds: int

    @property
    def delta(self) -> dt.timedelta:
        """The shift as a negative timedelta."""
        return -dt.timedelta(days=self.days, seconds=self.seconds)


class KeyedMapper:
    """HMAC-based mappings under one secret; each kind of value has its own domain label."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def digest(self, domain: str, value: str) -> bytes:
        """HMAC-SHA256 of '<domain>\\0<value>' under the secret."""
        return hmac.new(self._secret, f"{domain}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A '2.25.' UID (PS3.5 B.2) from the first 128 bits of the keyed hash; registered standard UIDs are kept."""
        original = original.strip("\0 ")
        if registered_uid(original):
            return original
        return "2.25." + str(int.from_bytes(self.digest("uid", original)[:16], "big"))

    def derived_uid(self, kind: str, *parts: str) -> str:
        """A UID for an element that was empty, derived from other attributes of the same object."""
        return "2.25." + str(int.from_bytes(self.digest(f"uid-of-{kind}", "\0".join(parts))[:16], "big"))

    def pseudonym(self, patient_key: str) -> str:
        """'ANON' and 16 base32 characters for one patient (same patient, same pseudonym; fits SH/LO/PN)."""
        code = base64.b32encode(self.digest("patient", patient_key)[:10]).decode("ascii")
        return f"{PSEUDONYM_PREFIX}{code}"

    def shift(self, patient_key: str) -> Shift:
        """The patient's date shift: 1..3650 days and 0..86399 seconds back, the same for all their files."""
        raw = int.from_bytes(self.digest("date-shift", patient_key)[:8], "big")
        return Shift(days=1 + raw % MAX_SHIFT_DAYS, seconds=(raw // MAX_SHIFT_DAYS) % 86400)
