"""`medseg models list`: the installed models and their model card fields."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import typer

from medseg.cli.state import console

if TYPE_CHECKING:
    from medseg.models.registry import InstalledModel

T = TypeVar("T")

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
    register_prepare(models_app)

    @models_app.command("list", epilog=EXAMPLES)
    def list_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print the model cards as JSON."),
        verify: bool = typer.Option(
            False, "--verify", help="Also check each model as `medseg infer` does: the built-in card against its "
            "recorded SHA-256, the weights and the INT8 files against the card's.",
        ),
    ) -> None:
        """List the installed models with their model card fields (with --verify, check card, weights and INT8
        files as inference does)."""
        from medseg.errors import ProcessingError
        from medseg.models.registry import list_models

        found = list_models()
        problems: dict[str, str] = {}
        weights_bad: set[str] = set()
        if verify:
            for m in found:
                problem, weights_ok = verify_model(m)
                if problem:
                    problems[m.folder.name] = problem
                if not weights_ok:
                    weights_bad.add(m.folder.name)
        if as_json:
            cards = [m.card.model_dump(mode="json") | {"folder": str(m.folder), "model": m.folder.name} for m in found]
            if verify:
                for c in cards:
                    c["verified"] = c["model"] not in problems
                    c["weights_verified"] = c["model"] not in weights_bad
                    c["problem"] = problems.get(c["model"])
            console.result(json.dumps(cards, indent=2))
        else:
            _print(found, verify, problems)
        if problems:
            raise ProcessingError(f"model files do not match their recorded digests for {', '.join(sorted(problems))}",
                                  hint="Reinstall medseg; `medseg infer` refuses these models.")  # fmt: skip


def verify_model(model: InstalledModel) -> tuple[str | None, bool]:
    """What `medseg infer` would refuse in an installed model (its first problem, or None) and whether its weights
    match the card: the built-in card's recorded digest, the weights' and the INT8 files' SHA-256."""
    from medseg.errors import MedsegError
    from medseg.models.registry import check_builtin_card

    try:
        model.verify()
    except MedsegError as exc:
        return exc.message, False
    try:
        check_builtin_card(model)
        model.verify_int8()
    except MedsegError as exc:
        where = f"{exc.path.name}: " if exc.path is not None else ""
        return f"{where}{exc.message}", True
    return None, True


def _print(found: list[InstalledModel], verify: bool, problems: dict[str, str]) -> None:
    """Human-readable model list, one block per model."""
    if not found:
        console.result("no models installed")
        return
    from medseg.models.registry import DEFAULT_MODELS

    for m in found:
        c = m.card
        labels = ", ".join(f"{k}={v}" for k, v in c.labels.items())
        defaults = [organ for organ, name in DEFAULT_MODELS.items() if name == m.folder.name]
        default = f"  (default for --organ {', '.join(defaults)})" if defaults else ""
        check = ""
        if verify:
            check = f"  [MISMATCH: {problems[m.folder.name]}]" if m.folder.name in problems else "  [verified]"
        lines = [
            f"{c.name} {c.version}  organ={c.organ}  modality={c.modality}{default}",
            f"  --model {m.folder.name}  labels: {labels}",
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


def with_warnings_as_lines(what: str, work: Callable[[], T]) -> T:
    """Run `work`, turning the library warnings it raises (torch's ONNX exporter, OpenVINO) into one `warning:`
    line each, as `medseg infer` does when it loads a model: the README promises never a raw Python warning (a
    file path and a source line)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = work()
    for line in dict.fromkeys(f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}" for w in caught):
        console.warn(f"{what}: {line}")
    return result


PREPARE_EXAMPLES = """
Examples:

  medseg models prepare

  medseg models prepare liver --backend onnxruntime
"""


def register_prepare(models_app: typer.Typer) -> None:
    """Add `models prepare`: export and parity-check the accelerated runtime once, ahead of the first inference."""

    @models_app.command("prepare", epilog=PREPARE_EXAMPLES)
    def prepare(
        name: str | None = typer.Argument(None, help="Model name or folder (default: every installed model)."),
        backend: str = typer.Option("openvino", "--backend", help="openvino or onnxruntime."),
    ) -> None:
        """Export the model(s) for the CPU runtime and check them against eager torch (cached for later runs)."""
        from medseg.cli.audited import audited
        from medseg.errors import UsageError
        from medseg.infer.runtime import accelerated_runner
        from medseg.models.registry import list_models, resolve_model

        if backend not in ("openvino", "onnxruntime"):
            raise UsageError(f"unknown backend {backend!r}", hint="Use openvino or onnxruntime.")
        models = [resolve_model(name)] if name else list_models()
        with audited("models-prepare", params={"backend": backend}) as rec:
            for m in models:
                rec.add_inputs([m.weights_path])
                runner = with_warnings_as_lines(
                    f"while exporting {m.card.name} {m.card.version}", lambda m=m: accelerated_runner(m, backend)
                )
                p = runner.info["parity"]
                state = "exported" if runner.info["exported_now"] else "already cached"
                console.result(
                    f"{m.card.name} {m.card.version}: {backend} {state}; parity max |diff| {p['max_abs_diff']:.2e}, "
                    f"agreement {p['argmax_agreement']:.6f} ({runner.info['cache']})"
                )
