"""Traceability from a real pytest run's JUnit XML, the risk records, and the SOUP list from requirements.lock."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medseg.errors import InvalidInputError
from medseg.validation.soup import LOCK, read_lock, soup_diff, soup_list
from medseg.validation.traceability import RISK_DIR, build_matrix, read_junit, risk_list

TESTS = Path(__file__).parent
SAMPLE_FILES = {"test_sample.py"}  # the sample run's test file counts as this code's (only tests/ files do by default)
pytestmark = pytest.mark.req("REQ-021")

SAMPLE = """
import pytest

@pytest.mark.req("REQ-A")
def test_a():
    assert 1 + 1 == 2

@pytest.mark.req("REQ-B")
def test_b():
    assert 1 + 1 == 3

@pytest.mark.req("REQ-ZZZ")
def test_c():
    pass

@pytest.mark.req("REQ-D")
@pytest.mark.skip(reason="not here")
def test_d():
    pass
"""


@pytest.fixture(scope="module")
def junit(tmp_path_factory) -> Path:
    """JUnit XML of a real pytest run of every test of its folder (passing, failing, skipped tests, one claiming an
    unknown requirement): a run naming its file would be a partial run, a gap of its own."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "test_sample.py").write_text(SAMPLE)
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    req: requirement ids\n")
    env = os.environ | {"PYTHONPATH": str(TESTS)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "req_plugin", "-p", "no:randomly",
                           "-p", "no:cacheprovider", f"--junitxml={folder / 'junit.xml'}"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # test_b fails on purpose
    return folder / "junit.xml"


def risk_files(folder: Path, requirements: list[dict], hazards: list[dict]) -> Path:
    folder.mkdir()
    (folder / "requirements.yaml").write_text(yaml.safe_dump({"requirements": requirements}))
    (folder / "hazards.yaml").write_text(yaml.safe_dump({"hazards": hazards}))
    return folder


def hazard(hid: str, controls: list[str], verification: list[str]) -> dict:
    scores = {"severity": 4, "probability_before": 3, "severity_after": 4, "probability_after": 1}
    return {
        "id": hid,
        "hazard": hid,
        "controls": controls,
        "verification": verification,
        "residual_acceptable": True,
    } | scores


def test_node_ids_from_junit_names() -> None:
    from medseg.validation.traceability import node_id

    assert node_id("tests.test_x", "test_a[1-2]") == "tests/test_x.py::test_a[1-2]"
    assert node_id("tests.sub.test_x.TestY", "test_z") == "tests/sub/test_x.py::TestY::test_z"


def test_junit_properties_carry_the_requirement_ids(junit) -> None:
    results = {r.node: r for r in read_junit(junit)}
    assert results["test_sample.py::test_a"].reqs == ("REQ-A",)
    assert results["test_sample.py::test_b"].outcome == "failed"
    assert results["test_sample.py::test_d"].outcome == "skipped"


def test_every_gap_is_named_and_a_complete_matrix_passes(junit, tmp_path) -> None:
    reqs = [{"id": i, "type": "functional", "title": i} for i in ("REQ-A", "REQ-B", "REQ-C", "REQ-D")]
    reqs.append({"id": "REQ-E", "type": "performance", "title": "E", "criteria": ["AC-01"]})
    a, b = "test_sample.py::test_a", "test_sample.py::test_b"
    hazards = [hazard("HAZ-1", ["REQ-A"], [a]), hazard("HAZ-2", ["REQ-B"], [b]), hazard("HAZ-3", ["REQ-A"], [])]
    m = build_matrix(junit, {"AC-01": "pass"}, risk_files(tmp_path / "r1", reqs, hazards), test_files=SAMPLE_FILES)
    status = {r["id"]: r["status"] for r in m["requirements"]}
    assert status == {"REQ-A": "pass", "REQ-B": "fail", "REQ-C": "no_test", "REQ-D": "fail", "REQ-E": "pass"}
    gaps = "\n".join(m["gaps"])
    assert "claims unknown requirement REQ-ZZZ" in gaps
    assert "REQ-B: test test_sample.py::test_b failed" in gaps
    assert "REQ-C: no test or criterion verifies it" in gaps
    assert "REQ-D: every test was skipped" in gaps
    assert "HAZ-2: control REQ-B is fail" in gaps and "HAZ-3: no verification named" in gaps
    assert [h["verified"] for h in m["hazards"]] == [True, False, False] and not m["complete"]
    m = build_matrix(junit, {"AC-01": "fail"}, risk_files(tmp_path / "r2", reqs[4:], []), test_files=SAMPLE_FILES)
    assert m["gaps"] == ["test test_sample.py::test_a claims unknown requirement REQ-A",
                         "test test_sample.py::test_b claims unknown requirement REQ-B",
                         "test test_sample.py::test_c claims unknown requirement REQ-ZZZ",
                         "test test_sample.py::test_d claims unknown requirement REQ-D",
                         "REQ-E: criterion AC-01 is fail"]  # fmt: skip
    clean = [{"id": "REQ-A", "type": "functional", "title": "A"}]
    m = build_matrix(
        junit,
        {},
        risk_files(tmp_path / "r3", clean, [hazard("HAZ-1", ["REQ-A"], ["test_sample.py::test_a"])]),
        test_files=SAMPLE_FILES,
    )
    assert [g for g in m["gaps"] if "claims" not in g] == []


def _markers_in(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "req":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant)}
    return found


def test_the_project_risk_records_are_consistent() -> None:
    reqs = risk_list(RISK_DIR / "requirements.yaml", "requirements")
    ids = [r["id"] for r in reqs]
    assert len(ids) == len(set(ids)) and {r["type"] for r in reqs} <= {
        "functional",
        "performance",
        "safety",
        "security",
    }
    used = set().union(*(_markers_in(p) for p in TESTS.glob("test_*.py"))) - {"REQ-A", "REQ-B", "REQ-D", "REQ-ZZZ"}
    assert used <= set(ids), used - set(ids)
    named = [t for r in reqs for t in r.get("tests", [])]
    named += [t for h in risk_list(RISK_DIR / "hazards.yaml", "hazards") for t in h["verification"]]
    for t in named:  # every named test exists (as a file, or a function in it), so CI can run it
        path, _, func = t.partition("::")
        assert (TESTS.parent / path).is_file() and (not func or f"def {func}(" in (TESTS.parent / path).read_text()), t
    hazards = risk_list(RISK_DIR / "hazards.yaml", "hazards")
    assert len(hazards) >= 10
    for h in hazards:
        assert set(h["controls"]) <= set(ids), h["id"]
        assert all(1 <= h[k] <= 5 for k in ("severity", "probability_before", "severity_after", "probability_after"))
        for t in h["verification"]:
            assert (TESTS.parent / t.split("::")[0]).is_file(), t
    text = json.dumps(hazards).lower()
    for topic in ("wrong organ or wrong side", "geometry", "neighbouring organ", "phi", "mr,", "swapped",
                  "leaked into training", "altered after signing", "wrong study", "duplicated seg"):  # fmt: skip
        assert topic in text, topic


def test_soup_list_has_every_locked_package_with_exact_version_licence_and_tracker() -> None:
    rows = soup_list()
    pins = read_lock()
    assert [r["name"] for r in rows] == sorted(pins)
    for r in rows:
        assert r["version"] == pins[r["name"]] == r["installed"], r
        assert r["licence"] and r["purpose"] != "not stated", r
    assert sum(r["anomaly_reference"] is not None for r in rows) >= len(rows) - 5
    by_name = {r["name"]: r for r in rows}
    assert (
        by_name["torch"]["version"] == "2.13.0+cpu"
        and "github.com/pytorch/pytorch/issues" in by_name["torch"]["anomaly_reference"]
    )


def test_soup_diff_names_added_removed_and_changed(tmp_path) -> None:
    lock = tmp_path / "requirements.lock"
    lines = LOCK.read_text().splitlines()
    edited = [
        ln.replace("==", "==0.0.") if ln.startswith("typer==") else ln for ln in lines if not ln.startswith("rich==")
    ]
    lock.write_text("\n".join(edited) + "\n")
    old = [{"name": n, "version": v} for n, v in read_lock(lock).items()] + [{"name": "gone", "version": "1"}]
    diff = soup_diff(old, soup_list())
    assert diff["removed"] == ["gone==1"] and diff["added"] == [f"rich=={read_lock()['rich']}"]
    assert diff["changed"] == [f"typer: 0.0.{read_lock()['typer']} -> {read_lock()['typer']}"]


def test_cyclonedx_sbom_lists_every_locked_package_with_a_purl() -> None:
    from medseg.validation.soup import cyclonedx

    rows = soup_list()
    bom = cyclonedx(rows)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    assert bom["serialNumber"] == cyclonedx(rows)["serialNumber"]  # reproducible from the lock file
    purls = {c["purl"] for c in bom["components"]}
    assert purls == {f"pkg:pypi/{n}@{v}" for n, v in read_lock().items()}
    torch = next(c for c in bom["components"] if c["name"] == "torch")
    assert torch["externalReferences"] == [
        {"type": "issue-tracker", "url": "https://github.com/pytorch/pytorch/issues"}
    ]
    assert sum("licenses" in c for c in bom["components"]) == len(rows)


def test_junit_evidence_is_bound_to_the_code_it_tested(junit, tmp_path) -> None:
    """A hand-written JUnit file, or one from another version of the code, does not complete the matrix."""
    from medseg.validation.traceability import SOURCE_PROPERTY, source_digest, suite_properties

    assert suite_properties(junit)[SOURCE_PROPERTY] == source_digest()
    clean = [{"id": "REQ-A", "type": "functional", "title": "A"}]
    risk = risk_files(tmp_path / "r", clean, [hazard("HAZ-1", ["REQ-A"], ["test_sample.py::test_a"])])
    m = build_matrix(junit, {}, risk, test_files=SAMPLE_FILES)
    assert m["junit"]["of_this_code"] and not [g for g in m["gaps"] if "claims" not in g]
    text = junit.read_text()
    for name, forged in {"no digest": text.replace(SOURCE_PROPERTY, "other"),
                         "older code": text.replace(source_digest(), "0" * 64)}.items():  # fmt: skip
        (tmp_path / f"{name}.xml").write_text(forged)
        m = build_matrix(tmp_path / f"{name}.xml", {}, risk, test_files=SAMPLE_FILES)
        assert not m["complete"] and "not from a test run of this code" in m["gaps"][0], name
    import xml.etree.ElementTree as ET

    tree = ET.parse(junit)
    foreign = ET.SubElement(tree.getroot(), "testsuite", name="foreign", tests="1")
    ET.SubElement(foreign, "testcase", classname="test_sample", name="test_a")
    tree.write(tmp_path / "merged.xml")
    m = build_matrix(tmp_path / "merged.xml", {}, risk, test_files=SAMPLE_FILES)
    assert not m["junit"]["of_this_code"] and "1 of 2 test suite(s)" in m["gaps"][0]
    (tmp_path / "page.xml").write_text("<html><body>tests passed</body></html>")
    with pytest.raises(InvalidInputError, match="not a JUnit XML file"):
        read_junit(tmp_path / "page.xml")
    code_copy = tmp_path / "code"
    (code_copy / "medseg").mkdir(parents=True)
    (code_copy / "medseg" / "x.py").write_text("A = 1\n")
    before = source_digest(code_copy)
    (code_copy / "medseg" / "x.py").write_text("A = 2\n")
    assert source_digest(code_copy) != before
