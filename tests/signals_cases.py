"""Ctrl-C during an MLflow write: the write commits, the interrupt follows, and the store is not left locked
(CI once saw `medseg train` exit 4 "database is locked" instead of 130 after a Ctrl-C).

These tests raise SIGINT in their own process, so `tests/test_signals.py` runs them in a fresh interpreter (a
command line process's state): in a long-lived pytest-xdist worker the raised signal once ended the worker.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medseg.signals import deferred_interrupt, interrupt_on_sigterm
from medseg.train.tracking import Tracker


@pytest.fixture(autouse=True)
def _python_ctrl_c_handler():
    """Python's own Ctrl-C handler, as a command line process has it; whatever an earlier test in this worker left
    (CI once had SIGINT's default action there: the raised signal then ended the pytest worker) is restored after."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_interrupt_waits_for_the_block_then_is_raised() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        signal.raise_signal(signal.SIGINT)
        done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with deferred_interrupt():
        done.append("no signal, no interrupt")
    assert len(done) == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_the_write_is_also_held_together_under_the_clis_sigterm_handler(signum: int) -> None:
    """`medseg` runs every command under `interrupt_on_sigterm`; its handler once made the deferral a no-op (a
    reviewer saw KeyboardInterrupt before the commit), and SIGTERM was never deferred."""
    done = []
    expected = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    with pytest.raises(KeyboardInterrupt, match=expected), interrupt_on_sigterm(), deferred_interrupt():
        signal.raise_signal(signum)
        done.append("commit")
    assert done == ["commit"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _wait_for_interrupt(seconds: float = 5.0) -> None:
    """Ordinary code running until an interrupt arrives (a failure if none comes in `seconds`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    pytest.fail(f"no KeyboardInterrupt within {seconds} s")


def test_a_signal_inside_importlib_is_raised_after_it_not_inside_it() -> None:
    """Raised inside importlib's own code (a module-lock weakref callback), the interrupt was printed as "Exception
    ignored" and lost, and `medseg batch` hung with every later signal ignored (review 20): it is now re-sent until
    the main thread runs other code."""
    done = [False]
    importlib_like = compile("while not done[0]:\n    pass\n", "<frozen importlib._bootstrap>", "exec")
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
    threading.Timer(0.5, done.__setitem__, (0, True)).start()
    with interrupt_on_sigterm(), pytest.raises(KeyboardInterrupt, match="SIGTERM") as err:
        exec(importlib_like, {"done": done})
        _wait_for_interrupt()
    assert done[0], "the importlib-like loop was cut short"
    where = [f.filename for f in traceback.extract_tb(err.value.__traceback__)]
    assert not any(name.startswith("<frozen importlib") for name in where), where


def test_a_repeat_is_ignored_during_the_hand_back_but_not_when_the_first_was_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import medseg.signals

    monkeypatch.setattr(medseg.signals, "LOST_INTERRUPT_S", 0.3)
    with interrupt_on_sigterm():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # the hand-back is under way: ignored
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.35)
        with pytest.raises(KeyboardInterrupt):  # still running long after: the first was lost, raise again
            signal.raise_signal(signal.SIGTERM)


def test_a_handler_someone_installed_is_left_alone() -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with deferred_interrupt():
            signal.raise_signal(signal.SIGINT)
            assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, old)


def _statements(engine: Any, write: Callable[[], None]) -> int:
    from sqlalchemy import event

    count = [0]

    def hook(*_: Any) -> None:
        count[0] += 1

    event.listen(engine, "after_cursor_execute", hook)
    try:
        write()
    finally:
        event.remove(engine, "after_cursor_execute", hook)
    return count[0]


def _interrupted(engine: Any, at: int, write: Callable[[], None]) -> bool:
    """Run `write` with Ctrl-C arriving right after its `at`-th SQL statement; True if KeyboardInterrupt came."""
    from sqlalchemy import event

    count = [0]

    def hook(*_: Any) -> None:
        if count[0] == at:
            signal.raise_signal(signal.SIGINT)
        count[0] += 1

    event.listen(engine, "after_cursor_execute", hook)
    try:
        write()
    except KeyboardInterrupt:
        return True
    finally:
        event.remove(engine, "after_cursor_execute", hook)
    return False


def _locked(db: Path) -> bool:
    con = sqlite3.connect(db, timeout=0)
    try:
        con.execute("BEGIN EXCLUSIVE")
        con.rollback()
        return False
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return True
    finally:
        con.close()


def _store_engine() -> Any:
    from mlflow.tracking._tracking_service.utils import _get_store

    return _get_store().engine


def test_ctrl_c_at_any_statement_of_a_metric_write_leaves_the_store_usable(tmp_path: Path, monkeypatch) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient, fluent
    from mlflow.tracking._tracking_service import utils

    # Tracker.start sets MLflow's process-wide URI and experiment (and their environment variables): restored after
    monkeypatch.setattr(utils, "_tracking_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.setenv(name, "")  # remembers the value before (or its absence), then unset for the test
        monkeypatch.delenv(name)

    probe = Tracker(tmp_path / "probe", None, "interrupt")
    probe.start("probe")
    n = _statements(_store_engine(), lambda: probe.log_metrics({"loss": 1.0}, 0))
    probe.end()
    assert n >= 3

    locked_without = 0
    for at in range(n):
        run_dir = tmp_path / f"plain{at}"  # control: the same write through MLflow alone
        run_dir.mkdir()
        client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
        experiment = client.create_experiment("interrupt", artifact_location=run_dir.as_uri())
        run_id = client.create_run(experiment).info.run_id
        engine = client._tracking_client.store.engine
        metric = Metric("loss", 1.0, 0, 1)
        assert _interrupted(engine, at, lambda: client.log_batch(run_id, metrics=[metric]))  # noqa: B023
        locked_without += _locked(run_dir / "mlflow.db")

        run_dir = tmp_path / f"medseg{at}"
        run_dir.mkdir()
        tracker = Tracker(run_dir, None, "interrupt")
        tracker.start("run")
        assert _interrupted(_store_engine(), at, lambda: tracker.log_metrics({"loss": 1.0}, 1))  # noqa: B023
        assert not _locked(run_dir / "mlflow.db"), f"store locked after Ctrl-C at statement {at} of {n}"
        tracker.end("KILLED")
        run = MlflowClient(tracker.uri).get_run(tracker.run_id)
        assert run.info.status == "KILLED"
        assert run.data.metrics == {"loss": 1.0}, "the interrupted write did not commit"
    assert locked_without >= 1, "the control never locked the store: the test no longer reaches the failure"
