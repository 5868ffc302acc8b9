"""The tissue table of the synthetic CT generator (classes, HU priors per phase), loaded from `tissues.yaml`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InvalidInputError
from medseg.yamltext import load_yaml

TABLE = Path(__file__).with_name("tissues.yaml")


@dataclass(frozen=True)
class TissueTable:
    """Class ids by name, HU priors by class id and phase, and the generator's other constants."""

    ids: dict[str, int]
    hu: dict[int, dict[str, tuple[float, float]]]
    sd: dict[int, tuple[float, float]]
    oral_contrast_ids: frozenset[int]
    phases: tuple[str, ...]
    phase_p: tuple[float, ...]
    raw: dict[str, Any]

    @property
    def liver_ids(self) -> tuple[int, ...]:
        return tuple(self.raw["liver_ids"])

    def label_lut(self, organs: tuple[str, ...]) -> np.ndarray:
        """Tissue class id -> output label (organs[i] -> i + 1, everything else 0)."""
        lut = np.zeros(max(self.lut_size(), 256), dtype=np.uint8)
        for i, organ in enumerate(organs, start=1):
            parts = self.raw["organ_tissues"].get(organ)
            if parts is None:
                raise InvalidInputError(f"organ {organ!r} is not in the generator's organ_tissues table", path=TABLE)
            lut[[self.ids[p] for p in parts]] = i
        return lut

    def prior(self, cid: int, phase: str) -> tuple[float, float]:
        table = self.hu[cid]
        return table.get(phase, table.get("all", (0.0, 0.0)))

    def lut_size(self) -> int:
        return max(self.ids.values()) + 2


@cache
def tissue_table() -> TissueTable:
    """Parse `tissues.yaml` once."""
    raw = load_yaml(TABLE.read_text())
    ids, hu, sd, oral = {}, {}, {}, set()
    for name, spec in raw["classes"].items():
        cid = int(spec["id"])
        ids[name] = cid
        hu[cid] = {k: (float(v[0]), float(v[1])) for k, v in spec["hu"].items()}
        sd[cid] = (float(spec["sd"][0]), float(spec["sd"][1]))
        if spec.get("oral_contrast"):
            oral.add(cid)
    return TissueTable(ids, hu, sd, frozenset(oral), tuple(raw["phases"]), tuple(raw["phase_probabilities"]), raw)


def label_names(labels_json: Path) -> dict[int, str]:
    """A label source's voxel values and their names, as its labels.json gives them."""
    try:
        return {int(k): str(v) for k, v in json.loads(labels_json.read_text()).items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise InvalidInputError(f"cannot read label names: {exc}", path=labels_json) from exc


def source_lut(labels_json: Path) -> np.ndarray:
    """A lookup table from a label source's voxel values to generator class ids (via its labels.json names)."""
    table = tissue_table()
    aliases = table.raw["sources"]["aliases"]
    names = label_names(labels_json)
    lut = np.zeros(max(names) + 1, dtype=np.uint8)
    for value, name in names.items():
        if value == 0:
            continue
        unified = aliases.get(name, name)
        if unified not in table.ids or table.ids[unified] >= 30:
            raise InvalidInputError(f"unknown organ name {name!r} in label map vocabulary", path=labels_json)
        lut[value] = table.ids[unified]
    return lut
