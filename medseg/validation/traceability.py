"""Traceability: requirement -> tests (JUnit XML of this run, `req` properties or named node ids) and validation
criteria -> result; hazards' controls -> verified or not. Every gap is listed; the matrix is complete only without."""

from __future__ import annotations

import fnmatch
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medseg.audit.digest import file_sha256
from medseg.errors import InvalidInputError
from medseg.validation.sets import REPO
from medseg.yamltext import load_yaml

RISK_DIR = REPO / "docs" / "risk"
SOURCE_PROPERTY = "medseg_source_sha256"
SELECTION_PROPERTY = "medseg_selection"  # 'full', or what narrowed the run (tests/req_plugin.py)
COLLECTED_PROPERTY = "medseg_tests_collected"
DESELECTED_PROPERTY = "medseg_tests_deselected"
SOURCE_TREES = ("medseg", "tests")
SOURCE_FILES = ("requirements.lock", "pyproject.toml")
NOT_SOURCE_DIRS = frozenset({"__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"})
NOT_SOURCE_SUFFIXES = (".pyc", ".pyo")
BOUND_BY_CARD = ("medseg/models/zoo/*/weights.pt", "medseg/models/zoo/*/int8/*")  # each card records their SHA-256


def source_files(repo: Path = REPO) -> list[Path]:
    """What a test run tests, sorted by path: every file under medseg/ and tests/ (code, templates, YAML and JSON
    data, fixtures) and the dependency lock and project file; not caches, compiled Python, nor the model weights
    and int8 files, whose digests the model cards (in the digest) record."""
    found = [repo / name for name in SOURCE_FILES if (repo / name).is_file()]
    for tree in SOURCE_TREES:
        for path in (repo / tree).rglob("*"):
            rel = path.relative_to(repo)
            if (not path.is_file() or NOT_SOURCE_DIRS & set(rel.parts) or path.suffix in NOT_SOURCE_SUFFIXES
                    or any(fnmatch.fnmatch(rel.as_posix(), p) for p in BOUND_BY_CARD)):  # fmt: skip
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(repo).as_posix())


def source_digest(repo: Path = REPO) -> str:
    """SHA-256 over `source_files` (relative path and content SHA-256 of each, in path order; no times or modes,
    so a fresh clone gives the same digest): what a test run tested.

    The test run writes it into its JUnit XML (tests/req_plugin.py), so a run of another version of the code does
    not complete this release's traceability matrix. The digest is not a secret: a hand-written file can carry it
    (signing the test runner's results would close that; docs/risk/validation.md)."""
    digest = hashlib.sha256()
    for path in source_files(repo):
        digest.update(path.relative_to(repo).as_posix().encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def repo_test_files(repo: Path = REPO) -> set[str]:
    """The test files of this code as JUnit node files ('tests/test_x.py'): the .py files under tests/ among
    `source_files`."""
    files = (p.relative_to(repo) for p in source_files(repo))
    return {f.as_posix() for f in files if f.parts[0] == "tests" and f.suffix == ".py"}


@dataclass(frozen=True)
class TestResult:
    """One test case of the run: pytest node id, outcome (passed/failed/skipped/xfailed) and the requirements it
    claims."""

    node: str
    outcome: str
    reqs: tuple[str, ...]


def node_id(classname: str, name: str) -> str:
    """pytest node id from JUnit classname/name: 'tests.test_x.TestY', 'test_z' -> 'tests/test_x.py::TestY::test_z'."""
    parts = classname.split(".")
    n = next((i for i, p in enumerate(parts) if p[:1].isupper()), len(parts))
    return "::".join(["/".join(parts[:n]) + ".py", *parts[n:], name])


def _junit_root(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise InvalidInputError(
            f"cannot read the JUnit XML: {exc}", path=path, hint="Pass pytest's --junitxml file."
        ) from exc
    if root.tag not in ("testsuite", "testsuites"):
        raise InvalidInputError(f"not a JUnit XML file (its root element is <{root.tag}>)", path=path,
                                hint="Pass pytest's --junitxml file.")  # fmt: skip
    return root


def _suites(path: Path) -> list[ET.Element]:
    root = _junit_root(path)
    return [root] if root.tag == "testsuite" else list(root.iter("testsuite"))


def suite_properties(path: Path) -> dict[str, str]:
    """The test suites' own <properties> (not the test cases'), e.g. the source digest of the run."""
    return {p.get("name", ""): p.get("value", "") for s in _suites(path) for ps in s.findall("properties")
            for p in ps.findall("property")}  # fmt: skip


def tested_sources(path: Path) -> list[str | None]:
    """The source digest each test suite of the file carries (None for a suite without one): every suite's test
    cases count, so every suite must come from a run of this code."""
    return [
        next((p.get("value") for ps in s.findall("properties") for p in ps.findall("property")
              if p.get("name") == SOURCE_PROPERTY), None)
        for s in _suites(path)
    ]  # fmt: skip


def _suite_props(suite: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for ps in suite.findall("properties") for p in ps.findall("property")}


def partial_runs(path: Path) -> list[str]:
    """What made each test suite of the file a partial run, one line each (none for a full run): the selection the
    plugin recorded (-k, -m, --deselect, node ids or file arguments...), deselected tests, or no record at all.
    Tests left out of the run are invisible in it, so only a run of every test can verify the release."""
    out = []
    for suite in _suites(path):
        props = _suite_props(suite)
        selection, deselected = props.get(SELECTION_PROPERTY), props.get(DESELECTED_PROPERTY, "")
        counts = f"{props.get(COLLECTED_PROPERTY, '?')} collected, {deselected or '?'} deselected"
        if selection is None:
            out.append("the run does not record which tests it selected (run this release's tests/req_plugin.py)")
        elif selection != "full" or (deselected.isdigit() and int(deselected) > 0):
            out.append(f"the run selected a subset of the tests ({selection}; {counts})")
    return out


def read_junit(path: Path) -> list[TestResult]:
    """Every <testcase> of a JUnit XML file (pytest --junitxml) with its outcome and `req` properties."""
    root = _junit_root(path)
    out = []
    for tc in root.iter("testcase"):
        node = node_id(tc.get("classname", ""), tc.get("name", ""))
        if tc.find("failure") is not None or tc.find("error") is not None:
            outcome = "failed"
        elif (skipped := tc.find("skipped")) is not None:
            outcome = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
        else:
            outcome = "passed"
        reqs = tuple(p.get("value", "") for p in tc.iter("property") if p.get("name") == "req")
        out.append(TestResult(node, outcome, reqs))
    return out


def risk_list(path: Path, key: str) -> list[dict[str, Any]]:
    """The list under `key` of a risk YAML file."""
    try:
        return list(load_yaml(path.read_text())[key])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"cannot read {key} from the risk file: {exc}", path=path) from exc


def _matches(pattern: str, node: str) -> bool:
    base = node.split("[", 1)[0]
    return base == pattern or (pattern.endswith(".py") and base.startswith(pattern + "::"))


def _status(
    tests: list[TestResult], named: list[str], criteria: list[str], verdicts: dict[str, str]
) -> tuple[str, list[str]]:
    """(status, problems) of one requirement from its tests and criteria: a test, named or linked by its req marker,
    verifies it only when every result of it passed (a skipped, xfailed or failed one is a gap, named)."""
    problems = []
    for name in named:
        ran = [t for t in tests if _matches(name, t.node)]
        if not ran:
            problems.append(f"named test {name} did not run")
        not_passed = sorted({t.outcome for t in ran if t.outcome != "passed"})
        if not_passed:
            problems.append(f"named test {name} was {'/'.join(not_passed)}")
    # a test linked by its req marker verifies only when it passed, as a named one (skipped or xfailed: a gap)
    problems += [f"test {t.node} {'failed' if t.outcome == 'failed' else 'was ' + t.outcome}" for t in tests
                 if t.outcome != "passed" and not any(_matches(n, t.node) for n in named)]  # fmt: skip
    for c in criteria:
        if verdicts.get(c) != "pass":
            problems.append(f"criterion {c} is {verdicts.get(c, 'not evaluated')}")
    if not tests and not criteria:
        return ("not_run", problems) if named else ("no_test", ["no test or criterion verifies it"])
    if tests and all(t.outcome == "skipped" for t in tests) and not criteria:
        problems.append("every test was skipped")
    return ("pass" if not problems else "fail"), problems


def build_matrix(
    junit: Path, verdicts: dict[str, str], risk_dir: Path = RISK_DIR, test_files: Collection[str] | None = None
) -> dict[str, Any]:
    """The traceability matrix of this run; `complete` False when any requirement or hazard control is unverified.

    Only test cases of `test_files` (default: this code's test files, those under tests/ that the source digest
    covers) verify anything; a test case of any other file is a gap (a genuine run of a file outside the
    repository carries this code's digest too)."""
    accepted = set(test_files) if test_files is not None else repo_test_files()
    every = read_junit(junit)
    results = [t for t in every if t.node.split("::", 1)[0] in accepted]
    outside = [t for t in every if t.node.split("::", 1)[0] not in accepted]
    reqs = risk_list(risk_dir / "requirements.yaml", "requirements")
    hazards = risk_list(risk_dir / "hazards.yaml", "hazards")
    known = {r["id"] for r in reqs}
    sources = tested_sources(junit)
    this_code = source_digest()
    foreign = [t for t in sources if t != this_code]
    bound = bool(sources) and not foreign
    tested = foreign[0] if foreign else (sources[0] if sources else None)
    gaps = [] if bound else [
        f"the JUnit file is not from a test run of this code ({len(foreign)} of {len(sources)} test suite(s) carry "
        f"another source SHA-256, e.g. {str(tested)[:12]}...; this code's {this_code[:12]}...): run the tests of "
        "this release with --junitxml"
    ]  # fmt: skip
    gaps += [
        f"test {t.node} is not one of this code's test files (tests/, in the source digest): it verifies nothing"
        for t in outside
    ]
    partial = partial_runs(junit)
    gaps += [f"{p}: only a run of every test (scripts/test.sh) verifies the release" for p in partial]
    gaps += [f"test {t.node} claims unknown requirement {q}" for t in results for q in t.reqs if q not in known]
    rows = []
    for r in reqs:
        named = list(r.get("tests", []))
        tests = [t for t in results if r["id"] in t.reqs or any(_matches(n, t.node) for n in named)]
        status, problems = _status(tests, named, list(r.get("criteria", [])), verdicts)
        gaps += [f"{r['id']}: {p}" for p in problems]
        rows.append({"id": r["id"], "type": r["type"], "title": r["title"], "status": status,
                     "verified_by": sorted({t.node for t in tests}) + list(r.get("criteria", [])),
                     "tests_passed": sum(t.outcome == "passed" for t in tests), "tests": len(tests)})  # fmt: skip
    by_id = {row["id"]: row for row in rows}
    haz_rows = []
    for h in hazards:
        problems = [f"control {c} is {by_id[c]['status'] if c in by_id else 'an unknown requirement'}"
                    for c in h.get("controls", []) if by_id.get(c, {}).get("status") != "pass"]  # fmt: skip
        verification = list(h.get("verification", []))
        if not verification:
            problems.append("no verification named")
        for v in verification:
            ran = [t for t in results if _matches(v, t.node)]
            if not ran or any(t.outcome != "passed" for t in ran):
                problems.append(f"verification {v} did not pass in this run")
        gaps += [f"{h['id']}: {p}" for p in problems]
        haz_rows.append({"id": h["id"], "hazard": h["hazard"], "controls": h.get("controls", []),
                         "verified": not problems, "risk_before": h["severity"] * h["probability_before"],
                         "risk_after": h["severity_after"] * h["probability_after"],
                         "residual_acceptable": h["residual_acceptable"]})  # fmt: skip
    passed = sum(r["status"] == "pass" for r in rows)
    summary = (f"{passed}/{len(rows)} requirements verified, {sum(h['verified'] for h in haz_rows)}/{len(haz_rows)} "
               f"hazard controls verified, {len(every)} tests in the run, {len(gaps)} gap(s)")  # fmt: skip
    return {
        "junit": {"sha256": file_sha256(junit), "tests": len(every), "outside_test_files": len(outside),
                  "failed": sum(t.outcome == "failed" for t in every),
                  "source_sha256": tested, "of_this_code": bound, "full_run": not partial,
                  "selection": [_suite_props(s).get(SELECTION_PROPERTY) for s in _suites(junit)]},
        "requirements_sha256": file_sha256(risk_dir / "requirements.yaml"),
        "hazards_sha256": file_sha256(risk_dir / "hazards.yaml"),
        "requirements": rows, "hazards": haz_rows, "gaps": gaps, "complete": not gaps, "summary": summary,
    }  # fmt: skip
