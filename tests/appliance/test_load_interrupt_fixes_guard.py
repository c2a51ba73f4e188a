"""safefiles.undone_on_failure / uninterrupted: an undo, or a removal, runs to its end whatever
signal arrives meanwhile, which then takes effect; and the lines `appliance load` and `rm`
print when Ctrl-C stops them say what is left (appliance/cli_titles.py)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from appliance.cli_titles import load_interrupted, rm_interrupted
from appliance.index import LOADING, READY, REMOVING, TitleRow
from appliance.safefiles import undone_on_failure, uninterrupted


@pytest.fixture(autouse=True)
def _python_handlers() -> Iterator[None]:
    """Python's own SIGINT handler, as a command has it (and back as it was)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_during_the_undo_of_an_interrupted_step_waits_for_its_end() -> None:
    steps: list[str] = []

    def undo() -> None:
        signal.raise_signal(signal.SIGINT)  # the second press of a double Ctrl-C
        steps.append("undo half")
        signal.raise_signal(signal.SIGINT)
        steps.append("undo done")

    with pytest.raises(KeyboardInterrupt), undone_on_failure(undo):
        steps.append("copy")
        signal.raise_signal(signal.SIGINT)  # the first: the step stops here
        steps.append("never")
    assert steps == ["copy", "undo half", "undo done"]


def test_ctrl_c_during_the_undo_of_a_failed_step_stops_once_it_is_done() -> None:
    steps: list[str] = []

    def undo() -> None:
        signal.raise_signal(signal.SIGINT)
        steps.append("undo done")

    with pytest.raises(KeyboardInterrupt) as caught, undone_on_failure(undo):
        raise ValueError("checksum mismatch")
    assert steps == ["undo done"]
    assert isinstance(caught.value.__context__, ValueError)


def test_a_step_that_succeeds_is_not_undone() -> None:
    undone: list[bool] = []
    with undone_on_failure(lambda: undone.append(True)):
        pass
    assert undone == []


def test_an_uninterrupted_block_ends_before_its_ctrl_c_takes_effect() -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt), uninterrupted():
        signal.raise_signal(signal.SIGINT)
        steps.append("removed")
    assert steps == ["removed"]
    with uninterrupted(), uninterrupted():  # nested, nothing arrives: nothing happens
        steps.append("again")
    assert steps == ["removed", "again"]


def test_an_uninterrupted_block_inside_a_step_stops_the_step_after_it() -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt), undone_on_failure(lambda: steps.append("undone")):
        with uninterrupted():
            signal.raise_signal(signal.SIGINT)
            steps.append("block done")
        steps.append("never")
    assert steps == ["block done", "undone"]


def test_handlers_of_someone_else_are_left_alone() -> None:
    seen: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: seen.append(signum))
    try:
        with uninterrupted():
            signal.raise_signal(signal.SIGINT)
            assert seen == [signal.SIGINT]  # at once, by its own handler
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_off_the_main_thread_the_undo_still_runs() -> None:
    result: list[str] = []

    def work() -> None:
        try:
            with undone_on_failure(lambda: result.append("undone")):
                raise ValueError("boom")
        except ValueError:
            result.append("raised")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert result == ["undone", "raised"]


def _row(state: str, digest: str = "d1") -> TitleRow:
    return TitleRow("huge", digest, state, "hdd", 100, 1.0, "huge")


def test_the_load_line_says_what_is_left() -> None:
    assert load_interrupted("huge", None, None) == "load interrupted; no part of huge was kept"
    # Waiting for a disk to come back to finish its removal: a load replaces that.
    assert load_interrupted("huge", _row(REMOVING), None).endswith("no part of huge was kept")
    ready = _row(READY)
    assert "is as it was" in load_interrupted("huge", ready, ready)
    assert "old version is gone too" in load_interrupted("huge", ready, None)
    assert "it is ready" in load_interrupted("huge", None, _row(READY, "d2"))
    assert "next reconcile removes it" in load_interrupted("huge", None, _row(LOADING))
    assert "`appliance ls` shows" in load_interrupted("huge", None, "unknown")


def test_the_rm_line_says_what_is_left() -> None:
    assert rm_interrupted("huge", None).endswith("huge was removed: it is gone")
    assert rm_interrupted("huge", _row(READY)) == "rm interrupted; huge was not removed"
    assert "next reconcile removes it" in rm_interrupted("huge", _row(REMOVING))
    assert "`appliance ls` shows" in rm_interrupted("huge", "unknown")
