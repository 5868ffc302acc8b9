"""Global CLI options shared by all subcommands."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medseg.cli.console import Console

console = Console()


@dataclass
class FastExit:
    """Set by a command that succeeded with its audit record written: `main` then fsyncs these output folders,
    flushes stdout/stderr and ends the process with os._exit(0), skipping the interpreter's slow teardown."""

    folders: list[Path] = field(default_factory=list)


fast_exit: list[FastExit] = []  # at most one; a list so commands can set it without a `global`
