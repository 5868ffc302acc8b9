"""pytest plugin: `@pytest.mark.req("REQ-xxx")` ids become JUnit XML properties (name "req") of each test.

Loaded by tests/conftest.py; elsewhere `python -m pytest -p req_plugin` with tests/ on PYTHONPATH.

It also writes into the JUnit suite properties the digest of the code under test and what the run selected (every
test, or a subset by -k/-m/--deselect/--lf/node ids or file arguments) with the numbers of tests collected and
deselected, so `medseg validate` does not count a partial run as the release's test run. It runs in every test run:
it is cheap, and an error of its own never fails the run (the property is then missing, a gap for validate).
"""

from __future__ import annotations

import logging

import pytest

RECORDER = "medseg_selection_recorder"
SELECTING_OPTIONS = {  # option dest -> how the report names it; each one makes the run a subset of the tests
    "keyword": "-k",
    "markexpr": "-m",
    "deselect": "--deselect",
    "ignore": "--ignore",
    "ignore_glob": "--ignore-glob",
    "lf": "--last-failed",
    "stepwise": "--stepwise",
    "stepwise_skip": "--stepwise-skip",
}


def _selection(config: pytest.Config) -> str:
    """'full' when the run collects every test of its test paths; else what narrowed it, e.g. '-k x; args a.py'."""
    found = [f"{flag} {getattr(config.option, dest)}" for dest, flag in SELECTING_OPTIONS.items()
             if getattr(config.option, dest, None)]  # fmt: skip
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        roots = {config.rootpath.resolve()} | {(config.rootpath / p).resolve() for p in config.getini("testpaths")}
        here = config.invocation_params.dir
        narrowing = [a for a in config.args if "::" in a or (here / a).resolve() not in roots]
        if narrowing:
            found.append("args " + " ".join(narrowing))
    return "; ".join(found) or "full"


class _Recorder:
    """Counts the deselected tests and writes the collected and deselected numbers before the JUnit file is written."""

    def __init__(self, xml: object) -> None:
        self.xml = xml
        self.deselected = 0

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from medseg.validation.traceability import COLLECTED_PROPERTY, DESELECTED_PROPERTY

        try:
            self.xml.add_global_property(COLLECTED_PROPERTY, str(session.testscollected))  # type: ignore[attr-defined]
            counted = not session.config.pluginmanager.has_plugin("dsession")  # xdist's workers deselect, unseen
            deselected = str(self.deselected) if counted else "not counted (pytest-xdist)"
            self.xml.add_global_property(DESELECTED_PROPERTY, deselected)  # type: ignore[attr-defined]
        except Exception:  # (the plugin never fails a run; validate sees the missing property)
            logging.getLogger(__name__).warning("req_plugin could not record the test counts", exc_info=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Write the digest of the code under test and the run's selection into the JUnit XML's suite properties
    (medseg validate checks both)."""
    from _pytest.junitxml import xml_key  # the object pytest's record_testsuite_property uses; works under xdist

    from medseg.validation.traceability import SELECTION_PROPERTY, SOURCE_PROPERTY, source_digest

    config = session.config
    xml = config.stash.get(xml_key, None)
    if xml is None or config.pluginmanager.has_plugin(RECORDER):
        return
    xml.add_global_property(SOURCE_PROPERTY, source_digest())
    try:
        xml.add_global_property(SELECTION_PROPERTY, _selection(config))
        config.pluginmanager.register(_Recorder(xml), RECORDER)
    except Exception:  # (the plugin never fails a run; validate sees the missing property)
        logging.getLogger(__name__).warning("req_plugin could not record the run's selection", exc_info=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Copy each test's requirement ids into its user properties, which --junitxml writes out."""
    for item in items:
        for mark in item.iter_markers("req"):
            for req in mark.args:
                item.user_properties.append(("req", str(req)))
