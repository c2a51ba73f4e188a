"""A signal that lands while an ingest publishes: deferred until the title is live, then
the command finishes instead of claiming that nothing was published (a real encode,
in-process, so the signal can be sent at exactly that moment)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from origin.cli import _cancellable
from origin.config import EncodeConfig
from origin.ingest import IngestRequest, ingest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_publishing_waits_and_the_ingest_completes(
    tmp_path: Path, bikes: Path, sig: int
) -> None:
    req = IngestRequest(bikes, "t", "T", tmp_path, heights=(240,))
    with _cancellable() as cancel:

        @contextmanager
        def publishing() -> Iterator[None]:
            with cancel.publishing():
                os.kill(os.getpid(), sig)  # lands while the title is made live
                yield

        model, _digest = ingest(req, EncodeConfig(), publishing=publishing)
    assert model.id == "t"
    assert (tmp_path / "titles" / "t" / "files.json").is_file()


def test_a_signal_before_publishing_still_cancels(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="nothing was published"), _cancellable():
        os.kill(os.getpid(), signal.SIGINT)
