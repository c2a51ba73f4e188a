"""nofile_plan: the descriptor limit a server asks for, and the connection cap that fits."""

from __future__ import annotations

import resource

from edgeflix.http.runner import FD_RESERVE, nofile_plan

INF = resource.RLIM_INFINITY


def test_a_low_soft_limit_is_raised_toward_the_hard_one() -> None:
    assert nofile_plan(4096, 1024, 1_048_576) == (2 * 4096 + FD_RESERVE, 4096)
    assert nofile_plan(4096, 1024, INF) == (2 * 4096 + FD_RESERVE, 4096)


def test_enough_already_is_left_alone() -> None:
    assert nofile_plan(100, 65_536, 65_536) == (65_536, 100)
    assert nofile_plan(100, INF, INF) == (INF, 100)


def test_a_low_hard_limit_lowers_the_cap_to_fit() -> None:
    assert nofile_plan(4096, 200, 200) == (200, (200 - FD_RESERVE) // 2)
    assert nofile_plan(4096, 100, 1000) == (1000, (1000 - FD_RESERVE) // 2)
    assert nofile_plan(4096, 10, 10) == (10, 1)  # never below one connection


def test_the_file_cache_is_counted_in() -> None:
    assert nofile_plan(100, 1024, 1024, open_files=256) == (1024, 100)
    assert nofile_plan(1000, 1024, 1024, open_files=256) == (1024, (1024 - FD_RESERVE - 256) // 2)
