"""`load_yaml` (libyaml's C loader) reads every YAML file the project ships exactly as `yaml.safe_load` does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medseg.yamltext import SafeLoader, load_yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    p for p in REPO.rglob("*.y*ml") if ".venv" not in p.parts and ".git" not in p.parts and "mlruns" not in p.parts
)


def test_the_c_loader_is_used_where_pyyaml_has_it() -> None:
    assert len(SHIPPED) >= 20
    assert issubclass(SafeLoader, yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


def test_a_key_repeated_on_one_line_is_refused_too() -> None:
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a'"):
        load_yaml("m: {a: 1, a: 2}\n")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_same_result_as_safe_load(path: Path) -> None:
    text = path.read_text()
    assert load_yaml(text) == yaml.safe_load(text)


def test_unsafe_tags_are_refused_like_safe_load() -> None:
    for loader in (load_yaml, yaml.safe_load):
        with pytest.raises(yaml.YAMLError):
            loader("!!python/object/apply:os.system ['true']")
