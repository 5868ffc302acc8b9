"""`--organ liver,spleen`: which of a model's labels to serve, and how they are numbered in the outputs.

Only organs with validation figures in the model card are served; any other organ is refused (exit 2) with the
list the model is validated for. The outputs number the requested organs 1..N in the order given (labels.nii.gz,
the SEG's segment numbers, summary.json `organs[].label`); a single organ keeps the file name `<organ>.nii.gz`.
"""

from __future__ import annotations

import numpy as np

from medseg.errors import UsageError
from medseg.models.card import ModelCard


def parse_organs(text: str) -> tuple[str, ...]:
    """'liver, spleen' -> ('liver', 'spleen'); duplicates and empty items are a usage error."""
    organs = tuple(o.strip().lower() for o in text.split(","))
    if not organs or any(not o for o in organs) or len(set(organs)) != len(organs):
        raise UsageError(f"invalid --organ {text!r}", hint="Give organ names separated by commas, e.g. liver,spleen.")
    return organs


def select_organs(card: ModelCard, organs: tuple[str, ...]) -> dict[int, str]:
    """The model's label value for each requested organ, in request order; refuses unknown or unvalidated ones."""
    by_name = {name: value for value, name in card.foreground_labels.items()}
    validated = card.validated_organs
    missing = [o for o in organs if o not in by_name]
    if missing:
        raise UsageError(f"model {card.name} {card.version} has no {', '.join(missing)} output",
                         hint=f"It segments {', '.join(by_name)}; pick another --model or --organ.")  # fmt: skip
    unvalidated = [o for o in organs if o not in validated]
    if unvalidated:
        raise UsageError(
            f"model {card.name} {card.version} has no validation figures for {', '.join(unvalidated)} in its card: "
            "not served",
            hint=f"Validated organs: {', '.join(validated) or 'none'}.",
        )
    return {by_name[o]: o for o in organs}


def renumber(
    labels: np.ndarray, selected: dict[int, str], within: tuple[slice, ...] | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """Keep only the selected labels, numbered 1..N in request order; returns the map and its {value: name}.

    `within`: a box known to hold every non-zero label (only it is scanned)."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    region, target = (labels, out) if within is None else (labels[within], out[within])
    names = {}
    for i, (value, name) in enumerate(selected.items(), start=1):
        target[region == value] = i
        names[i] = name
    return out, names
