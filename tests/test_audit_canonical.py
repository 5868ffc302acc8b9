"""Canonical JSON and parameter normalisation: any parameter set hashes the same after a round trip."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.audit.canonical import canonical_json, chain_hash, normalise
from medseg.audit.config import load_config
from medseg.audit.session import audit_session, params_to_json
from medseg.audit.store import AuditStore
from medseg.audit.verify import verify_store

KEY = bytes(range(32))
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
)
params = st.dictionaries(st.text(min_size=1), values, max_size=6)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


@given(params)
def test_params_survive_canonical_json(p: dict[str, Any]) -> None:
    stored = params_to_json(p, KEY)
    text = canonical_json(stored)
    assert not _has_float(stored)
    assert canonical_json(json.loads(text)) == text
    assert normalise(stored) == stored
    assert chain_hash("0" * 64, {"params": json.loads(text)}) == chain_hash("0" * 64, {"params": stored})


@given(st.dictionaries(st.text(), st.integers(), min_size=2, max_size=8))
def test_key_order_does_not_change_the_hash(d: dict[str, int]) -> None:
    reversed_order = dict(reversed(list(d.items())))
    assert canonical_json(d) == canonical_json(reversed_order)
    assert chain_hash("ab" * 32, d) == chain_hash("ab" * 32, reversed_order)


@given(
    st.from_regex(r"\A[1-9][0-9]{0,5}(\.[0-9]{1,6}){3,8}\Z")
    | st.builds(lambda a, b: f"/{a}/{b}", st.text(min_size=1), st.text(min_size=1))
)
def test_uids_and_paths_are_never_stored_raw(text: str) -> None:
    stored = params_to_json({"series": text, "nested": [text], "path": Path(text)}, KEY)
    assert text not in canonical_json(stored)
    assert stored["series"] == stored["nested"][0] == params_to_json({"x": text}, KEY)["x"]


@given(
    st.from_regex(r"\A[1-9][0-9]{0,5}(\.[0-9]{1,6}){3,8}\Z") | st.from_regex(r"\A2\.25\.[1-9][0-9]{20,38}\Z"),
    st.sampled_from(["", " ", "series "]),
    st.sampled_from(["", " ", "#2", "#13", "\n"]),
)
def test_a_uid_inside_a_longer_value_is_never_stored_raw(uid: str, before: str, after: str) -> None:
    """`--series '<uid>#2'`, the key `medseg series` prints for a split series, was stored raw."""
    stored = canonical_json(params_to_json({"series": before + uid + after}, KEY))
    assert uid not in stored


def test_version_numbers_stay_readable() -> None:
    assert params_to_json({"model": "abdomen-2.2.0", "v": "2.2"}, KEY) == {"model": "abdomen-2.2.0", "v": "2.2"}


@settings(max_examples=15, deadline=None)
@given(st.lists(params, min_size=1, max_size=4))
def test_random_params_chain_and_verify(tmp_path_factory, batch: list[dict[str, Any]]) -> None:
    config = load_config(tmp_path_factory.mktemp("audit"))
    for p in batch:
        with audit_session("convert", p, software={"medseg": "t"}, config=config):
            pass
    with AuditStore.open(config, create=False) as store:
        assert verify_store(store).ok
        stored = [r.body["params"] for r in store.records() if r.body["kind"] == "end"]
    key = _path_key(config.db_path)
    assert stored == [params_to_json(p, key) for p in batch]


def _path_key(db: Path) -> bytes:
    with sqlite3.connect(db) as conn:
        return bytes.fromhex(conn.execute("SELECT value FROM meta WHERE key = 'path_key'").fetchone()[0])


def test_floats_are_stored_as_round_trip_strings() -> None:
    assert params_to_json({"t": 0.1, "n": float("nan"), "i": float("-inf"), "one": 1.0}, KEY) == {
        "t": "0.1",
        "n": "nan",
        "i": "-inf",
        "one": "1.0",
    }
