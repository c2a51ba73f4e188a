"""`edgeflix appliance fill` given bad input on its command line: one line on stderr and a
non-zero exit, never a traceback, and nothing is contacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_fill import appliance_config, fill


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "http://127.0.0.1:99999", "--title", "clip"], "Port out of range"),
        (["--from", "http://[::1", "--title", "clip"], "not a usable URL"),
        (["--from", "http://127.0.0.1:9", "--title", "clip", "--cap-mbps", "inf"], "1000000"),
        (["--from", "http://127.0.0.1:9", "--title", "clip", "--cap-mbps", "1e-7"], "1 bit/s"),
        (["--from", "http://127.0.0.1:9", "--title", "../x"], "title id"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    proc = fill(appliance_config(tmp_path), *args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], proc.stderr
