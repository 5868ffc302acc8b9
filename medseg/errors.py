"""Typed errors raised by library code; the CLI maps each to its documented exit code.

Exit codes (README): 0 success, 1 integrity check failed, 2 usage error, 3 invalid input, 4 processing failure,
5 quality-control rejection.
"""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """Base error: a one-line message naming what is wrong, which file, and what to do."""

    exit_code: int = 4

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None
        self.hint = hint

    def one_line(self) -> str:
        """The user-facing message: '<path>: <message> (<hint>)'."""
        text = f"{self.path}: {self.message}" if self.path is not None else self.message
        return f"{text}. {self.hint}" if self.hint else text


class UsageError(MedsegError):
    """The command was called wrongly (bad option, conflicting arguments, existing output)."""

    exit_code = 2


class InvalidInputError(MedsegError):
    """The input data cannot be used: not DICOM, missing slices, truncated, no image volume..."""

    exit_code = 3


class ProcessingError(MedsegError):
    """Valid input, but processing failed (model digest mismatch, write failure, internal fault)."""

    exit_code = 4


class IntegrityError(MedsegError):
    """A record is not what was written: changed after the fact or never recorded (exit 1, as a failed verify)."""

    exit_code = 1


class AuditError(ProcessingError):
    """The audit trail could not be written; the command must not run unaudited."""


class QCRejectedError(MedsegError):
    """A quality-control check rejected the input or result under --strict."""

    exit_code = 5

    def __init__(self, message: str, *, flags: list[str] | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.flags = flags or []
