"""pytest plugin: `@pytest.mark.req("REQ-xxx")` ids become JUnit XML properties (name "req") of each test.

Loaded by tests/conftest.py; elsewhere `python -m pytest -p req_plugin` with tests/ on PYTHONPATH.
"""

from __future__ import annotations

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    """Write the digest of the code under test into the JUnit XML's suite properties (medseg validate checks it)."""
    from _pytest.junitxml import xml_key  # the object pytest's record_testsuite_property uses; works under xdist

    from medseg.validation.traceability import SOURCE_PROPERTY, source_digest

    xml = session.config.stash.get(xml_key, None)
    if xml is not None:
        xml.add_global_property(SOURCE_PROPERTY, source_digest())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Copy each test's requirement ids into its user properties, which --junitxml writes out."""
    for item in items:
        for mark in item.iter_markers("req"):
            for req in mark.args:
                item.user_properties.append(("req", str(req)))
