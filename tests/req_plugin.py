"""pytest plugin: `@pytest.mark.req("REQ-xxx")` ids become JUnit XML properties (name "req") of each test.

Loaded by tests/conftest.py; elsewhere `python -m pytest -p req_plugin` with tests/ on PYTHONPATH.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Copy each test's requirement ids into its user properties, which --junitxml writes out."""
    for item in items:
        for mark in item.iter_markers("req"):
            for req in mark.args:
                item.user_properties.append(("req", str(req)))
