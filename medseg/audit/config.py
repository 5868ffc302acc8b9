"""Where the audit store lives and who the operator is, from environment variables.

MEDSEG_AUDIT_DIR        folder of the SQLite store (default: $XDG_DATA_HOME/medseg/audit or ~/.local/share/medseg/audit)
MEDSEG_AUDIT_ANCHOR_DIR folder of the chain-head anchor log (default: the audit folder; put it on another volume
                        or a WORM mount so that deleting the database tail cannot also rewrite the anchor)
MEDSEG_OPERATOR         the operator identity recorded beside the OS user (e.g. a staff ID; never a patient)
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import UsageError
from medseg.guard import default_audit_dir

DB_NAME = "audit.db"
ANCHOR_NAME = "chain-anchor.log"


@dataclass(frozen=True)
class AuditConfig:
    """Resolved audit settings."""

    audit_dir: Path
    anchor_dir: Path
    operator: str | None

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.audit_dir / DB_NAME

    @property
    def anchor_path(self) -> Path:
        """The append-only log of chain heads kept outside the database."""
        return self.anchor_dir / ANCHOR_NAME


def load_config(audit_dir: Path | None = None, anchor_dir: Path | None = None) -> AuditConfig:
    """Read the settings from the environment; explicit folders win over the variables.

    The anchor folder is `anchor_dir`, else MEDSEG_AUDIT_ANCHOR_DIR, else the store's folder, whether the store was
    named explicitly (`--audit-dir`) or not: naming the same store explicitly must not move its anchor (a false
    'anchor missing' for verify, and an export anchored beside the store that the next plain verify calls
    'never anchored')."""
    folder = Path(audit_dir or os.environ.get("MEDSEG_AUDIT_DIR") or default_audit_dir()).expanduser()
    anchor = Path(anchor_dir or os.environ.get("MEDSEG_AUDIT_ANCHOR_DIR") or folder).expanduser()
    operator = (os.environ.get("MEDSEG_OPERATOR") or "").strip() or None
    if operator is not None:
        _require_plain_text(operator)
    return AuditConfig(folder, anchor, operator)


_JOINERS = frozenset("\u200c\u200d")  # ZERO WIDTH NON-JOINER / JOINER: part of the spelling of Persian, Indic names


def _not_plain(char: str) -> bool:
    """A character an operator identity must not hold: control, format (bidi overrides and isolates among them),
    surrogate, private-use or unassigned, and line or paragraph separators; ZWNJ and ZWJ are allowed."""
    return char not in _JOINERS and unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _require_plain_text(operator: str) -> None:
    """Refuse an operator identity with control or format characters (but for ZWNJ and ZWJ, which names such as
    'محمد\u200cرضا' need), line or paragraph separators, or bytes that are not UTF-8 (UsageError, exit 2, before
    anything is recorded): a newline in it forged whole lines in `audit show`, a bidi override reorders what is
    shown, and a lone surrogate (an undecodable byte) could not be stored at all."""
    bad = next((c for c in operator if _not_plain(c)), None)
    if bad is not None:
        what = "a byte that is not UTF-8" if unicodedata.category(bad) == "Cs" else "a control or format character"
        raise UsageError(f"MEDSEG_OPERATOR holds {what} ({bad!a})",
                         hint="Set it to a plain staff ID (letters, digits, spaces, punctuation).")  # fmt: skip
