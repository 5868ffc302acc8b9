"""Global CLI options shared by all subcommands."""

from __future__ import annotations

from medseg.cli.console import Console

console = Console()
