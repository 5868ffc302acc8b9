"""The package dependency rules of DESIGN.md hold: arrows point down the table, nothing imports `cli`."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "medseg"
# base modules every package may use
SHARED = {"errors", "keys", "digests", "yamltext", "cache", "parallel", "offline", "signals", "monai_import", "guard"}
ALLOWED: dict[str, set[str]] = {
    "io": set(),
    "audit": set(),
    "metrics": set(),  # numpy/scipy only: one definition of every metric for train, validation and monitoring
    "deid": {"io"},
    "models": {"io"},
    "preprocess": {"io"},
    "postprocess": {"io", "preprocess"},  # resampling back reuses the separable resampler (one kernel, both ways)
    "writers": {"io", "postprocess"},  # summary and preview measure masks with postprocess.measure (one way)
    "infer": {"io", "models", "preprocess", "postprocess", "writers"},
    "train": {"io", "models", "preprocess", "infer", "audit", "metrics"},
    "validation": {"io", "models", "infer", "audit", "metrics"},
    "pacs": {"infer", "deid", "audit", "io", "writers", "models"},  # loads the model once, like cli/infer
    "monitor": {"io"},
}


def _medseg_imports(path: Path) -> set[str]:
    """Top-level medseg subpackages a module imports (at any depth, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "medseg" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_packages_import_only_what_the_design_allows() -> None:
    violations = []
    for package, allowed in ALLOWED.items():
        for module in (PKG / package).rglob("*.py"):
            bad = _medseg_imports(module) - allowed - SHARED - {package}
            if bad:
                violations.append(f"{module.relative_to(PKG)} imports {sorted(bad)}")
    assert not violations, violations


def test_nothing_imports_the_cli() -> None:
    users = [
        str(m.relative_to(PKG))
        for m in PKG.rglob("*.py")
        if "cli" in _medseg_imports(m) and m.relative_to(PKG).parts[0] not in ("cli", "__main__.py")
    ]
    assert users == [], users


def test_process_wide_helpers_import_nothing_of_medseg() -> None:
    """cache, parallel, offline and monai_import (imported by `medseg/__init__` or by every layer) stay
    standard-library only."""
    for name in ("cache", "parallel", "offline", "monai_import"):
        assert _medseg_imports(PKG / f"{name}.py") == set(), name
