"""Console output for the CLI: human messages, JSON log lines, and rich progress bars."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass
class Console:
    """Where the CLI says things: stderr for messages, stdout for results. Honours --quiet and --log-json."""

    quiet: bool = False
    log_json: bool = False
    debug: bool = False

    def _json(self, level: str, message: str, **fields: Any) -> None:
        rec = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "message": message,
        }
        rec.update(fields)
        sys.stderr.write(json.dumps(rec, default=str) + "\n")

    def info(self, message: str, **fields: Any) -> None:
        """A progress/status message (suppressed by --quiet, JSON lines included)."""
        if self.quiet:
            return
        if self.log_json:
            self._json("info", message, **fields)
        else:
            sys.stderr.write(message + "\n")

    def warn(self, message: str, **fields: Any) -> None:
        """A warning the user should see even with --quiet."""
        if self.log_json:
            self._json("warning", message, **fields)
        else:
            sys.stderr.write(f"warning: {message}\n")

    def error(self, message: str, **fields: Any) -> None:
        """The one-line error shown before a non-zero exit."""
        if self.log_json:
            self._json("error", message, **fields)
        else:
            sys.stderr.write(f"error: {message}\n")

    def result(self, text: str) -> None:
        """Primary output of a command (stdout), printed even with --quiet. A reader that went away (`| head -1`)
        does not undo the work: the rest of stdout is discarded and the command ends with the exit code (and audit
        outcome) of what it did, not click's silent exit 1."""
        try:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            _discard_stdout()

    @contextmanager
    def progress(self, description: str, total: float | None = None) -> Iterator[Any]:
        """A rich progress bar on stderr; yields `advance(n=1, **fields)`. Silent with --quiet/--log-json."""
        if self.quiet or self.log_json or not sys.stderr.isatty():
            self.info(description)

            def advance(n: float = 1, **fields: Any) -> None:
                if fields and self.log_json and not self.quiet:
                    self._json("progress", description, **fields)

            yield advance
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f}" if total else ""),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as bar:
            task = bar.add_task(description, total=total, status="")

            def advance(n: float = 1, **fields: Any) -> None:
                status = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
                bar.update(task, advance=n, status=status)

            yield advance


def _discard_stdout() -> None:
    """Point stdout's file descriptor at the null device, so that later writes and the flush at exit cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
