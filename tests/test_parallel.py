"""`medseg.parallel`: thread maps come back in input order with the serial results; background calls hand back
their result or their exception, and leave no thread behind."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.parallel import helper_threads, in_background, thread_map


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=12))
def test_thread_map_is_the_serial_map_in_order(items: list[int]) -> None:
    def slow_square(x: int) -> int:
        time.sleep((x % 3) * 0.001)  # later items often finish first
        return x * x

    assert thread_map(slow_square, items) == [x * x for x in items]


def test_thread_map_runs_beside_the_caller_on_two_cores(monkeypatch) -> None:
    """On two usable cores one helper thread works; `MEDSEG_THREADS=1` keeps everything on the calling thread."""
    names: set[str] = set()
    barrier = threading.Barrier(2, timeout=10)

    def record(_: int) -> None:
        names.add(threading.current_thread().name)
        if helper_threads():
            barrier.wait()  # both items run at the same time, or this times out

    monkeypatch.setattr("medseg.parallel.os.sched_getaffinity", lambda _: {0, 1})
    thread_map(record, [0, 1])
    assert len(names) == 2 and all(n.startswith("medseg-array") for n in names)
    names.clear()
    monkeypatch.setenv("MEDSEG_THREADS", "1")
    assert helper_threads() == 0
    thread_map(record, [0, 1])
    assert names == {threading.current_thread().name}


def test_thread_map_on_arrays_writes_each_slot_once() -> None:
    """The model clean-up's pattern: each call writes its own channel of one shared array."""
    out = np.zeros((8, 50, 50), dtype=np.float32)

    def fill(c: int) -> int:
        out[c] = c
        return c

    assert thread_map(fill, range(8)) == list(range(8))
    assert np.array_equal(out[:, 0, 0], np.arange(8, dtype=np.float32))


def test_in_background_returns_the_result_or_raises_and_leaves_no_thread() -> None:
    assert in_background(sum, [1, 2, 3]).result(timeout=10) == 6
    failing = in_background(int, "not a number")
    with pytest.raises(ValueError):
        failing.result(timeout=10)
    deadline = time.monotonic() + 10
    while any(t.name.startswith("medseg-background") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("medseg-background") for t in threading.enumerate())
