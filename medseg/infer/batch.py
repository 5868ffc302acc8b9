"""Batch runs: while case n runs the network, one background thread reads case n+1 and makes its model input.

The model stays loaded for the whole run and outputs are written by the caller, case by case, in order. A case
whose read fails in the background fails exactly as it would have in the foreground (the error is raised when
that case loads), and the others go on.

Python's `warnings` state is global (3.11): a read uses `warnings.catch_warnings` (pydicom's warnings are muted),
and so does every case (library warnings become notes). So the background read starts only once case n's network
has started (its first progress call) and case n waits for it when its network is done (its last progress call):
the read's warnings context nests inside case n's, while case n only runs the compiled network and numpy sums.
Known limits of that window: a warning the main thread raised in it would be muted, and one raised while case
n+1's model input is made would be noted in case n's summary. `settle` is called between cases; it waits for the
read and puts back the warnings state the run started with, should a case have failed in the middle of its
network. Case n's `inference` time includes any wait for the read at its end.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace

from medseg.infer.cases import Case
from medseg.infer.predict import ModelInput, model_input
from medseg.io import Volume
from medseg.models.card import ModelCard


def _read(case: Case, card: ModelCard) -> tuple[Volume, ModelInput | None]:
    """Load the case and make its model input (left to the foreground, which reports its error, if that fails)."""
    volume = case.load()
    try:
        return volume, model_input(volume, card)
    except Exception:  # the foreground makes it again and raises there, against this case
        return volume, None


@dataclass
class Prefetcher:
    """Hands out the cases of a batch with loads served by the background reader (see the module docstring)."""

    cases: list[Case]
    card: ModelCard
    _pool: ThreadPoolExecutor = field(init=False)
    _ahead: dict[int, Future[tuple[Volume, ModelInput | None]]] = field(default_factory=dict, init=False)
    _state: warnings.catch_warnings = field(init=False)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medseg-read-ahead")
        self._state = warnings.catch_warnings()
        self._state.__enter__()

    def __iter__(self) -> Iterator[tuple[int, Case]]:
        for n, case in enumerate(self.cases):
            yield n, replace(case, load=lambda n=n: self._load(n), prepared=lambda n=n: self._prepared(n))

    def progress(self, n: int, done: int, total: int) -> None:
        """Called by case n's network after each batch: start reading case n+1, and wait for it at the end."""
        nxt = n + 1
        if nxt < len(self.cases) and nxt not in self._ahead:
            self._ahead[nxt] = self._pool.submit(_read, self.cases[nxt], self.card)
        if done >= total and nxt in self._ahead:
            wait_for([self._ahead[nxt]])

    def settle(self, n: int) -> None:
        """After case n: drop what was read for it, let case n+1's read finish, restore the run's warnings state."""
        self._ahead.pop(n, None)
        if n + 1 in self._ahead:
            wait_for([self._ahead[n + 1]])
        self._state.__exit__(None, None, None)
        self._state = warnings.catch_warnings()
        self._state.__enter__()

    def close(self) -> None:
        """Stop the reader (a read not started yet is dropped) and restore the warnings state."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._state.__exit__(None, None, None)

    def _load(self, n: int) -> Volume:
        ahead = self._ahead.get(n)
        return ahead.result()[0] if ahead is not None else self.cases[n].load()

    def _prepared(self, n: int) -> ModelInput | None:
        ahead = self._ahead.get(n)
        if ahead is None or not ahead.done() or ahead.exception() is not None:
            return None
        return ahead.result()[1]


def progress_for(prefetcher: Prefetcher, n: int, show: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """Case n's progress callback: the display's, then the read-ahead's."""

    def progress(done: int, total: int) -> None:
        show(done, total)
        prefetcher.progress(n, done, total)

    return progress
