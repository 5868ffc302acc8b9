"""`medseg models list`: the installed models and their model card fields."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from medseg.cli.state import console

if TYPE_CHECKING:
    from medseg.models.registry import InstalledModel

EXAMPLES = """
Examples:

  medseg models list

  medseg models list --json

  medseg models list --verify
"""


def register(app: typer.Typer) -> None:
    """Add the `models` command group to the app."""
    models_app = typer.Typer(help="Installed segmentation models.", no_args_is_help=True)
    app.add_typer(models_app, name="models")

    @models_app.command("list", epilog=EXAMPLES)
    def list_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print the model cards as JSON."),
        verify: bool = typer.Option(False, "--verify", help="Also check each weights file against its SHA-256."),
    ) -> None:
        """List the installed models with their model card fields (with --verify, check their weights' digests)."""
        from medseg.errors import MedsegError, ProcessingError
        from medseg.models.registry import list_models

        found = list_models()
        problems: dict[str, str] = {}
        if verify:
            for m in found:
                try:
                    m.verify()
                except MedsegError as exc:
                    problems[m.card.name] = exc.message
        if as_json:
            cards = [m.card.model_dump(mode="json") | {"folder": str(m.folder)} for m in found]
            if verify:
                for c in cards:
                    c["weights_verified"] = c["name"] not in problems
            console.result(json.dumps(cards, indent=2))
        else:
            _print(found, verify, problems)
        if problems:
            raise ProcessingError(f"weights do not match the model card for {', '.join(sorted(problems))}")


def _print(found: list[InstalledModel], verify: bool, problems: dict[str, str]) -> None:
    """Human-readable model list, one block per model."""
    if not found:
        console.result("no models installed")
        return
    for m in found:
        c = m.card
        labels = ", ".join(f"{k}={v}" for k, v in c.labels.items())
        check = ""
        if verify:
            check = f"  [MISMATCH: {problems[c.name]}]" if c.name in problems else "  [verified]"
        lines = [
            f"{c.name} {c.version}  organ={c.organ}  modality={c.modality}",
            f"  labels: {labels}",
            f"  spacing: {' x '.join(f'{s:g}' for s in c.spacing)} mm"
            f"  window: {c.intensity.a_min:g}..{c.intensity.a_max:g} HU"
            f"  roi: {'x'.join(str(r) for r in c.roi_size)}  network: {c.network.name}",
            f"  intended use: {c.intended_use}",
            *(f"  limitation: {x}" for x in c.limitations),
            *(f"  metric {k}: {v}" for k, v in c.metrics.items()),
            f"  weights: {c.weights.file} sha256 {c.weights.sha256}{check}",
            f"  folder: {m.folder}",
        ]
        console.result("\n".join(lines))
