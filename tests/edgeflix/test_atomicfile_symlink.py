"""write_atomic (edgeflix/atomicfile.py) against a hostile folder: a symlink planted at the
temporary name it once used is not followed, and a write that fails leaves no temporary
file behind (and the old file as it was)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeflix.atomicfile import write_atomic

ROOT = Path(__file__).resolve().parents[2]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("mode", [0o600, 0o644], ids=["0600", "0644"])
def test_a_symlink_planted_at_the_old_temporary_name_is_not_followed(
    tmp_path: Path, mode: int
) -> None:
    """`ln -s /some/victim db/.fleet-http.pem.tmp` once had the victim truncated, written
    with the key, chmod'd, and the key file turned into a symlink to it."""
    db, victim = tmp_path / "db", tmp_path / "victim"
    db.mkdir()
    victim.write_bytes(b"the victim's own bytes\n")
    victim.chmod(0o640)
    planted = db / ".fleet-http.pem.tmp"
    planted.symlink_to(victim)
    target = db / "fleet-http.pem"

    write_atomic(target, b"-----BEGIN PRIVATE KEY-----\n", mode)

    assert victim.read_bytes() == b"the victim's own bytes\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640
    info = target.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == mode
    assert target.read_bytes() == b"-----BEGIN PRIVATE KEY-----\n"
    assert planted.is_symlink()  # left as it was, not ours to remove
    assert leftovers(db) == [planted.name]


def test_a_rename_that_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.mkdir()
    (target / "inside").write_bytes(b"")  # a non-empty folder: the rename onto it fails
    with pytest.raises(OSError):
        write_atomic(target, b"{}\n")
    assert leftovers(tmp_path) == []
    assert target.is_dir()


def test_a_write_that_fails_leaves_no_temporary_file_and_the_old_content(tmp_path: Path) -> None:
    """A real failing write: a process whose file size limit is smaller than the data
    (EFBIG, SIGXFSZ ignored), as on a full disk."""
    target = tmp_path / "keys.json"
    target.write_bytes(b"old\n")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from edgeflix.atomicfile import write_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_atomic(Path({str(target)!r}), b"x" * 65536)
        except OSError as exc:
            print(exc.errno)
            sys.exit(3)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 3, proc.stderr
    assert leftovers(tmp_path) == []
    assert target.read_bytes() == b"old\n"
