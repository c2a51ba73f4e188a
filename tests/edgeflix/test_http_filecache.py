"""FileCache on real files: fds reused, never stale after truncation, unlink, replace or move."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from edgeflix.http.filecache import FileCache


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_hit_reuses_the_fd(tmp_path: Path) -> None:
    path = tmp_path / "a.m4s"
    path.write_bytes(b"x" * 100)
    cache = FileCache(4)
    first = cache.acquire(str(path))
    cache.release(first)
    second = cache.acquire(str(path))
    assert second is first and second.size == 100
    cache.release(second)
    assert _is_open(first.fd)
    cache.clear()
    assert not _is_open(first.fd)


def test_truncated_in_place_shows_new_size_and_drops_heads(tmp_path: Path) -> None:
    path = tmp_path / "a.m4s"
    path.write_bytes(b"x" * 100)
    cache = FileCache(4)
    entry = cache.acquire(str(path))
    entry.heads["GET"] = b"HTTP/1.1 200 OK\r\n"
    cache.release(entry)
    os.truncate(path, 10)
    again = cache.acquire(str(path))
    assert again.size == 10 and again.heads == {}
    cache.release(again)
    cache.clear()


@pytest.mark.parametrize("how", ["unlink", "replace"])
def test_unlinked_or_replaced_file_is_reopened(tmp_path: Path, how: str) -> None:
    path = tmp_path / "a.m4s"
    path.write_bytes(b"old")
    cache = FileCache(4)
    old = cache.acquire(str(path))
    cache.release(old)
    if how == "unlink":
        path.unlink()
        with pytest.raises(FileNotFoundError):
            cache.acquire(str(path))
        path.write_bytes(b"new!")
    else:
        (tmp_path / "tmp").write_bytes(b"new!")
        os.replace(tmp_path / "tmp", path)
    new = cache.acquire(str(path))
    assert new is not old and os.pread(new.fd, 10, 0) == b"new!"
    assert old.evicted and len(cache) == 1  # (its fd number may be the new file's now)
    cache.release(new)
    cache.clear()


def test_eviction_waits_for_the_last_user(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.m4s")
        paths[-1].write_bytes(bytes([i]) * 10)
    cache = FileCache(2)
    busy = cache.acquire(str(paths[0]))
    for p in paths[1:]:
        cache.release(cache.acquire(str(p)))
    assert len(cache) == 2 and busy.evicted
    assert os.pread(busy.fd, 10, 0) == b"\x00" * 10  # still usable by its response
    cache.release(busy)
    assert not _is_open(busy.fd)
    cache.clear()


def test_sweep_closes_idle_unlinked_files_only(tmp_path: Path) -> None:
    kept, gone, busy_path = tmp_path / "kept", tmp_path / "gone", tmp_path / "busy"
    for p in (kept, gone, busy_path):
        p.write_bytes(b"data")
    cache = FileCache(8)
    for p in (kept, gone):
        cache.release(cache.acquire(str(p)))
    busy = cache.acquire(str(busy_path))
    gone.unlink()
    busy_path.unlink()
    assert cache.sweep() == 1
    assert len(cache) == 2
    cache.release(busy)
    cache.clear()


def test_capacity_zero_opens_per_use_and_refuses_directories(tmp_path: Path) -> None:
    path = tmp_path / "a"
    path.write_bytes(b"abc")
    cache = FileCache(0)
    entry = cache.acquire(str(path))
    cache.release(entry)
    assert len(cache) == 0 and not _is_open(entry.fd)
    with pytest.raises(IsADirectoryError):
        cache.acquire(str(tmp_path))


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer: the worker's whole loop with it."""
    fifo = tmp_path / "seg.m4s"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def acquire() -> None:
        try:
            FileCache(8).acquire(str(fifo))
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=acquire, daemon=True)
    thread.start()
    thread.join(5)
    waited = thread.is_alive()
    if waited:  # blocked in open(): a writer lets it go before the test ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    assert not waited, "the open waited on the FIFO"
    assert outcome and isinstance(outcome[0], IsADirectoryError)


def test_sweep_closes_files_left_unused(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot", tmp_path / "cold"
    for p in (hot, cold):
        p.write_bytes(b"data")
    cache = FileCache(8, max_idle_sweeps=2)
    for p in (hot, cold):
        cache.release(cache.acquire(str(p)))
    for _ in range(3):
        cache.release(cache.acquire(str(hot)))
        cache.sweep()
    assert len(cache) == 1  # only the file still in use stayed open
    cache.clear()


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    # A symlink planted in a store (pointing outside it) must not be served.
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    store = tmp_path / "store"
    store.mkdir()
    (store / "seg.m4s").write_bytes(b"segment")
    cache = FileCache(8)
    cache.release(cache.acquire(str(store / "seg.m4s")))
    (store / "link.m4s").symlink_to(outside)
    with pytest.raises(OSError) as info:
        cache.acquire(str(store / "link.m4s"))
    assert info.value.errno == errno.ELOOP
    # Swapped in for a file already open: the cached fd sees its unlink, the reopen refuses.
    (store / "swap").symlink_to(outside)
    os.replace(store / "swap", store / "seg.m4s")
    with pytest.raises(OSError):
        cache.acquire(str(store / "seg.m4s"))
    cache.clear()


def test_a_symlinked_folder_inside_a_title_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "seg.m4s").write_bytes(b"secret")
    title = tmp_path / "store" / "titles" / "bunny"
    title.mkdir(parents=True)
    (title / "v0").symlink_to(outside)
    cache = FileCache(8)
    path = str(title / "v0" / "seg.m4s")
    with pytest.raises(OSError) as info:
        cache.acquire(path, "bunny", "v0/seg.m4s")
    assert info.value.errno == errno.ELOOP
    # The whole title folder swapped for a symlink: refused too.
    (title / "v0").unlink()
    (title / "v0").mkdir()
    (title / "v0" / "seg.m4s").write_bytes(b"segment")
    cache.release(cache.acquire(path, "bunny", "v0/seg.m4s"))
    cache.clear()
    title.rename(tmp_path / "moved")
    title.symlink_to(tmp_path / "moved")
    with pytest.raises(OSError):
        cache.acquire(path, "bunny", "v0/seg.m4s")


@pytest.mark.parametrize("folder", ["titles/bunny~0a1b2c3d", ".replaced/bunny~1800000000~0a1b"])
def test_a_symlinked_folder_is_refused_in_a_folder_not_named_as_the_title(
    tmp_path: Path, folder: str
) -> None:
    """An appliance's updated title lives in `id~tag`, the origin's kept segments in
    `.replaced/id~until~token`: the guard went by the title's id in the path and so was
    skipped for both (a reviewer read a file outside the store through the origin)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "seg.m4s").write_bytes(b"secret")
    title = tmp_path / "store" / folder
    title.mkdir(parents=True)
    (title / "v0").symlink_to(outside)
    with pytest.raises(OSError) as info:
        FileCache(8).acquire(str(title / "v0" / "seg.m4s"), "bunny", "v0/seg.m4s")
    assert info.value.errno == errno.ELOOP
