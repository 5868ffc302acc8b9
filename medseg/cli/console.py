"""Console output for the CLI: human messages, JSON log lines, and rich progress bars."""

from __future__ import annotations

import json
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
        """A progress/status message (suppressed by --quiet)."""
        if self.log_json:
            self._json("info", message, **fields)
        elif not self.quiet:
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
        """Primary output of a command (stdout), printed even with --quiet."""
        sys.stdout.write(text if text.endswith("\n") else text + "\n")

    @contextmanager
    def progress(self, description: str, total: float | None = None) -> Iterator[Any]:
        """A rich progress bar on stderr; yields `advance(n=1, **fields)`. Silent with --quiet/--log-json."""
        if self.quiet or self.log_json or not sys.stderr.isatty():
            self.info(description)

            def advance(n: float = 1, **fields: Any) -> None:
                if fields and self.log_json:
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
