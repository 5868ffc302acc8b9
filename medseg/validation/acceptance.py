"""Pre-specified acceptance criteria (validation/acceptance/*.yaml) evaluated to pass / fail / not evaluable."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medseg.audit.digest import file_sha256
from medseg.errors import InvalidInputError, UsageError
from medseg.validation.sets import REPO
from medseg.yamltext import load_yaml

ACCEPTANCE_DIR = REPO / "validation" / "acceptance"
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
Statistic = Literal["mean", "median", "minimum", "maximum", "ci_low", "ci_high"]
CI_STATISTICS = ("ci_low", "ci_high")


class Bootstrap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    resamples: int = Field(2000, ge=1)
    level: float = Field(0.95, gt=0.0, lt=1.0)  # the central interval every CI of the record is computed at


class Criterion(BaseModel):
    """One criterion: `statistic(metric) op threshold`, overall or in every interpretable subgroup."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    text: str
    metric: str
    statistic: Statistic
    op: Literal[">=", ">", "<=", "<"]
    threshold: float = Field(allow_inf_nan=False)
    scope: Literal["overall", "subgroups"] = "overall"


class Acceptance(BaseModel):
    """An acceptance criteria file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    organ: str
    nsd_tolerance_mm: dict[str, float]
    bootstrap: Bootstrap
    subgroups: list[str] = []
    criteria: list[Criterion] = Field(min_length=1)


def acceptance_path(name: str) -> Path:
    """A criteria file by name (in validation/acceptance/) or path."""
    p = Path(name)
    return p if p.suffix in (".yaml", ".yml") else ACCEPTANCE_DIR / f"{name}.yaml"


def load_acceptance(path: Path) -> tuple[Acceptance, str]:
    """The parsed criteria file and its SHA-256."""
    if not path.is_file():
        raise UsageError("no such acceptance criteria file", path=path, hint="See validation/acceptance/.")
    try:
        return Acceptance.model_validate(load_yaml(path.read_text())), file_sha256(path)
    except (yaml.YAMLError, ValidationError) as exc:
        raise InvalidInputError(f"invalid acceptance file: {str(exc).splitlines()[0]}", path=path) from exc


def _check(c: Criterion, value: float) -> bool:
    return bool(OPS[c.op](value, c.threshold))


def evaluate(acc: Acceptance, aggregates: dict[str, dict[str, Any]], subgroups: list[dict[str, Any]]) -> dict[str, Any]:
    """Each criterion's verdict with its evidence, and the overall verdict (pass only when every criterion passes)."""
    results = []
    for c in acc.criteria:
        if c.metric not in aggregates:
            raise InvalidInputError(
                f"criterion {c.id} names unknown metric {c.metric!r}", hint=f"Known: {sorted(aggregates)}"
            )
        if c.scope == "overall":
            agg = aggregates[c.metric]
            value = agg[c.statistic]
            evidence: dict[str, Any] = {"value": value, "n": agg["n"], "n_patients": agg.get("n_patients")}
            if c.statistic in CI_STATISTICS and not agg.get("interpretable", True):
                verdict = "not_evaluable"  # a bootstrap CI over fewer than 3 patients has no coverage to speak of
            else:
                verdict = "pass" if _check(c, value) else "fail"
        else:
            groups = [g for g in subgroups if g["metric"] == c.metric]
            judged = [g | {"pass": _check(c, g[c.statistic])} for g in groups if g["interpretable"]]
            skipped = [f"{g['factor']}={g['value']} (n={g['n']})" for g in groups if not g["interpretable"]]
            verdict = "not_evaluable" if not judged else ("pass" if all(g["pass"] for g in judged) else "fail")
            evidence = {"evaluated": [{k: g[k] for k in ("factor", "value", "n", c.statistic, "pass")} for g in judged],
                        "not_interpretable": skipped}  # fmt: skip
        results.append(c.model_dump() | {"verdict": verdict, "evidence": evidence})
    verdicts = {r["verdict"] for r in results}
    overall = "pass" if verdicts == {"pass"} else ("fail" if "fail" in verdicts else "inconclusive")
    return {"name": acc.name, "version": acc.version, "criteria": results, "verdict": overall}
