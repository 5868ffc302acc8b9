"""Every test a document cites as evidence exists: README.md and docs/**/*.md name tests (risk-control
verification, `tests/test_x.py::test_y` or `test_x.py::test_y`, or a bare `test_y` in backticks); a renamed test
left docs/risk/pacs-service.md P8 citing a test that no longer existed. Test files are parsed with `ast` (nothing
is imported or run); a parametrized id `test_y[case]` names the function `test_y`."""

from __future__ import annotations

import ast
import fnmatch
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# `tests/sub/test_x.py::test_y`, `test_x.py::TestClass::test_y[param]`
FILE_REF = re.compile(
    r"(?<![\w/.-])((?:tests/)?(?:[\w-]+/)*test_\w+\.py)"  # the file
    r"::([A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)"  # the test, or Class::test
    r"(\[[^\]\s]*\])?"  # a parametrized id, dropped
)
# a bare test name in backticks, possibly a glob: `test_matches_deepmind_*`
BARE_REF = re.compile(r"`(test_[A-Za-z0-9_*]+)`")


def documents() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@cache
def defined_names(path: Path) -> frozenset[str]:
    """The functions of a Python file as pytest node names: `name` at module level, `Class::name` in a class."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return frozenset(names)


@cache
def all_test_names() -> frozenset[str]:
    """Every function name in every Python file under tests/ (and each test file's own stem)."""
    names: set[str] = set()
    for path in TESTS.rglob("*.py"):
        names.update(n.split("::")[-1] for n in defined_names(path))
        names.add(path.stem)
    return frozenset(names)


def file_refs(text: str) -> list[tuple[str, str]]:
    """(file, node) for each `file.py::node[param]` in the text; the parameter id is dropped."""
    return [(m.group(1), m.group(2)) for m in FILE_REF.finditer(text)]


def resolve(file: str) -> Path:
    """A cited test file: `tests/...` from the repository root, a bare `test_x.py` from tests/."""
    return REPO / file if file.startswith("tests/") else TESTS / file


def missing_file_refs(doc: Path) -> list[str]:
    """The `file::test` references of one document that name no existing test, each as 'file::test (why)'."""
    missing = []
    for file, node in file_refs(doc.read_text(encoding="utf-8")):
        path = resolve(file)
        if not path.is_file():
            missing.append(f"{file}::{node} (no file {path.relative_to(REPO)})")
        elif node not in defined_names(path):
            missing.append(f"{file}::{node} (no such test in {path.relative_to(REPO)})")
    return missing


def missing_bare_refs(doc: Path) -> list[str]:
    """Backticked `test_...` names (globs allowed) of one document that match no function or test file."""
    known = all_test_names()
    return [
        name
        for name in dict.fromkeys(BARE_REF.findall(doc.read_text(encoding="utf-8")))
        if not (fnmatch.filter(known, name) if "*" in name else name in known)
    ]


def test_the_reference_pattern_reads_every_cited_form() -> None:
    text = (
        "see `tests/test_a.py::test_one`, test_b.py::test_two[after_send] and "
        "tests/sub/test_c.py::TestK::test_three; not foo/test_d.pyc::x"
    )
    assert file_refs(text) == [
        ("tests/test_a.py", "test_one"),
        ("test_b.py", "test_two"),
        ("tests/sub/test_c.py", "TestK::test_three"),
    ]


def test_a_renamed_test_is_reported(tmp_path: Path) -> None:
    doc = tmp_path / "risk.md"
    doc.write_text(
        "| P8 | ... | `test_pacs_cli.py::test_serve_then_graceful_stop_leaves_no_running_job_and_audits` |\n"
        "| P9 | ... | `tests/test_docs_test_refs.py::test_a_renamed_test_is_reported[x]`, `test_no_such_*` |\n"
    )
    assert missing_file_refs(doc) == [
        "test_pacs_cli.py::test_serve_then_graceful_stop_leaves_no_running_job_and_audits "
        "(no such test in tests/test_pacs_cli.py)"
    ]
    assert missing_bare_refs(doc) == ["test_no_such_*"]


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_test_a_document_cites_exists(doc: Path) -> None:
    missing = missing_file_refs(doc) + [f"`{name}` (no such test)" for name in missing_bare_refs(doc)]
    assert not missing, f"{doc.relative_to(REPO)} cites tests that do not exist: " + "; ".join(missing)
