"""Open files kept between requests: an fd and its rendered heads per path, in a bounded LRU.

Used by server.py so a hot segment costs one fstat per request instead of open+fstat+close.
Never stale: every acquire re-fstats the cached fd (no path lookup). A file truncated or
rewritten in place shows its new size and mtime; a file unlinked or replaced by a rename shows
st_nlink == 0 and is reopened by path (so an fd is only used while its inode still sits at
that path, e.g. never after a tier move unlinked the old copy). (A route armed in routes.py
skips acquire: it checks the size per request and the whole stat once per 100 ms; a move or rm
through the index drops it within 10 ms anyway.) Entries in use by a response
are counted: eviction closes such an fd only when its last response is done. Idle entries are
closed after a few sweeps unused, so no fd keeps a removed title's space or a failed disk
(which an operator must unmount) pinned for long.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from typing import TYPE_CHECKING

from edgeflix.http.residency import CHECK_MAX, map_file, resident, unmap

if TYPE_CHECKING:
    from edgeflix.http.server import Prepared

# O_NOFOLLOW: a file in a store is never a symlink (load, fill and ingest write real files), so
# one there was planted to point outside the store; it is refused (ELOOP), not served.
# O_NONBLOCK: a FIFO planted there would block the open, and with it the worker's loop, until
# something wrote to it; opened at once, it is refused as not a regular file. Regular files
# ignore the flag.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class OpenFile:
    """One open file: fd, the stat seen by the last use, responses using it, cached heads,
    and its mapping, for asking which of its pages are cached (residency.py)."""

    __slots__ = (
        "addr", "cached_epoch", "dev", "evicted", "fd", "heads", "idle", "ino", "mtime_ns",
        "path", "refs", "size",
    )  # fmt: skip

    def __init__(self, fd: int, path: str, st: os.stat_result) -> None:
        self.fd = fd
        self.path = path
        self.refs = 0
        self.idle = 0  # sweeps since the last use
        self.evicted = False
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.dev, self.ino = st.st_dev, st.st_ino  # the file system (disk) it is on, and it
        self.addr = map_file(fd, st.st_size)
        # The server epoch (100 ms) in which every page was last seen cached: mincore costs
        # microseconds, so a file is asked about once an epoch, not per request.
        self.cached_epoch = -1
        # Plain GET/HEAD answers by method, ready to send: valid for this size and mtime. (They
        # point back at this entry; `_drop` and `refresh` clear them, which breaks the cycle.)
        self.heads: dict[str, Prepared] = {}

    def refresh(self, st: os.stat_result) -> None:
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            if st.st_size != self.size:
                unmap(self.addr, self.size)
                self.addr = map_file(self.fd, st.st_size)
            self.cached_epoch = -1
            self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
            self.heads = {}

    def cached(self, start: int, length: int, epoch: int) -> bool:
        """Bytes [start, start + length) are in the page cache (residency.py): a file up to
        CHECK_MAX is asked about whole, and then taken as cached for the rest of `epoch`."""
        if self.cached_epoch == epoch:
            return True
        if self.size <= CHECK_MAX and resident(self.addr, 0, self.size):
            self.cached_epoch = epoch
            return True
        # Big, or cached in part (a range read before): the span asked for is what counts.
        return resident(self.addr, start, length)

    def close(self) -> None:
        unmap(self.addr, self.size)
        self.addr = 0
        os.close(self.fd)


class FileCache:
    """Path → OpenFile, at most `capacity` entries (0 turns caching off: open per request)."""

    def __init__(self, capacity: int, max_idle_sweeps: int = 10) -> None:
        self.capacity = capacity
        self.max_idle_sweeps = max_idle_sweeps
        self._files: OrderedDict[str, OpenFile] = OrderedDict()
        # Marks the entry at a path (one not evicted, hence present) most recently used: the
        # dict's own C method, so the hot path pays no Python call for it.
        self.touch = self._files.move_to_end

    def __len__(self) -> int:
        return len(self._files)

    def acquire(self, path: str, title_id: str = "", rel_path: str = "") -> OpenFile:
        """The open, current file at `path`, counted as in use until `release`. When `path`
        ends in `rel_path`, the folders from the title's (the one holding it) down must be
        real ones.

        Raises OSError as os.open does (FileNotFoundError when it is gone, ELOOP for a
        symlink), and IsADirectoryError for anything that is not a regular file.
        """
        files = self._files
        entry = files.get(path)
        if entry is not None:
            try:
                st = os.fstat(entry.fd)
            except OSError:
                st = None
            if st is not None and st.st_nlink:
                entry.refresh(st)
                files.move_to_end(path)
                entry.refs += 1
                entry.idle = 0
                return entry
            self._drop(entry)
        if title_id:
            _refuse_symlinked_folders(path, rel_path)
        fd = os.open(path, _OPEN_FLAGS)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise IsADirectoryError(path)
        entry = OpenFile(fd, path, st)
        entry.refs = 1
        if self.capacity:
            files[path] = entry
            while len(files) > self.capacity:
                self._drop(files[next(iter(files))])
        else:
            entry.evicted = True  # closed by its release
        return entry

    def release(self, entry: OpenFile) -> None:
        entry.refs -= 1
        if entry.evicted and entry.refs <= 0:
            entry.close()

    def discard(self, entry: OpenFile) -> None:
        """Stop caching `entry` (damaged or unexpected): closed once no response uses it."""
        if self._files.get(entry.path) is entry:
            self._drop(entry)

    def sweep(self) -> int:
        """Close fds no response uses whose file was unlinked (a move or rm freed it: the space
        returns to the disk within one sweep) or that went unused for `max_idle_sweeps`
        sweeps. Returns how many were closed."""
        gone = []
        for entry in self._files.values():
            if entry.refs:
                continue
            entry.idle += 1
            if entry.idle > self.max_idle_sweeps:
                gone.append(entry)
                continue
            try:
                linked = os.fstat(entry.fd).st_nlink > 0
            except OSError:
                linked = False
            if not linked:
                gone.append(entry)
        for entry in gone:
            self._drop(entry)
        return len(gone)

    def clear(self) -> None:
        for entry in list(self._files.values()):
            self._drop(entry)

    def _drop(self, entry: OpenFile) -> None:
        del self._files[entry.path]
        entry.evicted = True
        entry.heads = {}
        if entry.refs <= 0:
            entry.close()


def _refuse_symlinked_folders(path: str, rel_path: str) -> None:
    """O_NOFOLLOW guards the last name only: the title's folder (the one holding `rel_path`,
    whatever its name: `id`, an appliance's `id~tag`, the origin's kept `id~until~token`)
    and those within it must not be symlinks either (one there was planted to lead outside
    the store). An lstat each, paid when a file is opened, not per request."""
    if not rel_path or not path.endswith("/" + rel_path):
        return
    folder = path
    for _ in range(rel_path.count("/") + 1):
        folder = folder.rpartition("/")[0]
        if stat.S_ISLNK(os.lstat(folder).st_mode):
            raise OSError(errno.ELOOP, "symlinked folder in a store", folder)
