"""The second core for array work: numpy and scipy.ndimage release the GIL in their inner loops, so a helper
thread runs beside the caller. Results always come back in input order, so a parallel loop gives exactly what the
serial loop gives, whatever the timing."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
THREADS_VARIABLE = "MEDSEG_THREADS"


class ThreadSettingError(ValueError):
    """`MEDSEG_THREADS` is not a whole number of at least 1; its message is one line naming the value and what to
    set. (This module imports nothing of medseg: commands turn it into their usage error, exit 2.)"""


def thread_cap() -> int | None:
    """The thread count `MEDSEG_THREADS` asks for, None where it is unset or empty. ThreadSettingError for
    anything but a whole number of at least 1: a typo must stop the command before any work, not fail a case
    after the model ran. Commands call it up front; `helper_threads` calls it too."""
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if not text:
        return None
    try:
        cap = int(text)
    except ValueError:
        cap = 0
    if cap < 1:
        raise ThreadSettingError(
            f"{THREADS_VARIABLE}={text!r} is not a number of threads (a whole number, 1 or "
            f"more). Set {THREADS_VARIABLE}=1 for one thread, or unset it to use the cores"
        )
    return cap


def helper_threads() -> int:
    """Helper threads beside the caller: one where two or more cores are usable, none on one core or with
    `MEDSEG_THREADS=1`. Never more than one: each thread holds one more array, and peak memory is a goal too."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cap = thread_cap()
    return max(0, min(cores if cap is None else min(cap, cores), 2) - 1)


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`[fn(x) for x in items]`, computed by as many threads as there are cores to use, in input order."""
    todo = list(items)
    if len(todo) < 2:
        return [fn(x) for x in todo]
    with array_threads() as run:
        return run(fn, todo)


Mapper = Callable[[Callable[[T], R], Iterable[T]], list[R]]


@contextmanager
def array_threads() -> Iterator[Mapper]:
    """A `thread_map` whose threads live for the whole block, for loops that fan out many small steps (the sliding
    window blends each window's channels on both cores); serial where there is no second core."""
    if helper_threads() == 0:
        yield lambda fn, items: [fn(x) for x in items]
        return
    with ThreadPoolExecutor(helper_threads() + 1, thread_name_prefix="medseg-array") as pool:
        yield lambda fn, items: list(pool.map(fn, items))


def in_background(fn: Callable[..., R], *args: object) -> Future[R]:
    """`fn(*args)` on a one-off helper thread (for work that releases the GIL, such as hashing files); the thread
    ends with the call, so nothing lingers in the process or in a forked child."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="medseg-background")
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)
