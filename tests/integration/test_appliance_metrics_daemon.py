"""A real daemon's /metrics, read strictly (tests/appliance/test_metrics_fixes.py's parser),
over the README's layout of two disk folders on one file system: a read that fails on the
second folder counts once over all disks, not once per folder. The failure is injected at
the `sitecustomize` seam of test_serving_read_errors_daemon.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.appliance.test_metrics_fixes import parse_exposition
from tests.integration.daemon_support import (
    files_on,
    load_spread_title,
    poll,
    seam_env,
    start_daemon,
    write_config,
)
from tests.integration.test_serving_read_errors_daemon import SEAM, get_uncached

BOUND_S = 30


def scrape(admin: str) -> list[tuple[str, dict[str, str], str]]:
    reply = httpx.get(admin + "/metrics", timeout=10)
    assert reply.status_code == 200
    return parse_exposition(reply.content)


def by_disk(samples: list[tuple[str, dict[str, str], str]], name: str) -> dict[str, int]:
    return {labels["disk"]: int(value) for n, labels, value in samples if n == name}


def test_a_read_error_on_a_shared_file_system_sums_to_one_over_disks(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    assert os.stat(d0).st_dev == os.stat(d1).st_dev
    load_spread_title(tmp_path, config)
    name = files_on(d1)[0]
    stored = d1 / "titles" / "spread" / name
    env = seam_env(tmp_path, SEAM, EDGEFLIX_TEST_READ_EIO_UNDER=str(d1.resolve()))
    daemon = start_daemon(config, env)
    try:
        done = poll(daemon, lambda d: d["daemon"]["startup_check"]["state"] == "done", BOUND_S)
        assert done is not None
        # Written back first (fadvise leaves dirty pages cached), then evicted: the worker
        # must read the bytes in, and the seam fails that read. Evicted again if a page
        # came back before the request (the start-up check reads every file).
        fd = os.open(stored, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        assert get_uncached(f"{daemon.url}/titles/spread/{name}", stored).status_code == 500
        # The worker's counts reach the supervisor on its next sample: wait for them.
        counted = ("edgeflix_appliance_read_errors_total", {}, "1")
        deadline = time.monotonic() + BOUND_S
        while counted not in (samples := scrape(daemon.urls["admin"])):
            assert time.monotonic() < deadline, "the read error was not counted"
            time.sleep(0.2)
        per_disk = by_disk(samples, "edgeflix_appliance_disk_read_errors_total")
        # The file system's one error, on its first configured disk: a sum over disk is 1.
        assert per_disk == {str(d0): 1, str(d1): 0}
    finally:
        assert daemon.stop() == 0
