"""`medseg models list`: the installed models and their model card fields."""

from __future__ import annotations

import json

import typer

from medseg.cli.state import console

EXAMPLES = """
Examples:

  medseg models list

  medseg models list --json
"""


def register(app: typer.Typer) -> None:
    """Add the `models` command group to the app."""
    models_app = typer.Typer(help="Installed segmentation models.", no_args_is_help=True)
    app.add_typer(models_app, name="models")

    @models_app.command("list", epilog=EXAMPLES)
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print the model cards as JSON.")) -> None:
        """List the installed models with their model card fields (weights are not read)."""
        from medseg.models.registry import list_models

        found = list_models()
        if as_json:
            cards = [m.card.model_dump(mode="json") | {"folder": str(m.folder)} for m in found]
            console.result(json.dumps(cards, indent=2))
            return
        if not found:
            console.result("no models installed")
            return
        for m in found:
            c = m.card
            labels = ", ".join(f"{k}={v}" for k, v in c.labels.items())
            lines = [
                f"{c.name} {c.version}  organ={c.organ}  modality={c.modality}",
                f"  labels: {labels}",
                f"  spacing: {' x '.join(f'{s:g}' for s in c.spacing)} mm"
                f"  window: {c.intensity.a_min:g}..{c.intensity.a_max:g} HU"
                f"  roi: {'x'.join(str(r) for r in c.roi_size)}  network: {c.network.name}",
                f"  intended use: {c.intended_use}",
                *(f"  limitation: {x}" for x in c.limitations),
                *(f"  metric {k}: {v}" for k, v in c.metrics.items()),
                f"  weights: {c.weights.file} sha256 {c.weights.sha256}",
                f"  folder: {m.folder}",
            ]
            console.result("\n".join(lines))
