"""`edgeflix origin serve`: the origin store over HTTP for appliances to fill from.

`/titles/<id>/<path>` through the shared file-serving core (Range, ETag, sendfile) and
`GET /titles`: every published title with its files.json digest, as JSON, encoded once per
view of the store (a publish or removal) and answered from memory with an ETag in between.
The first read of a large store (every files.json hashed) runs beside the serving: segments
answer at once, `GET /titles` answers 503 with Retry-After until that read is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeflix.http.conditional import Precondition, evaluate
from edgeflix.http.plan import CORS, Headers, ResponsePlan, plan_error, plan_simple
from edgeflix.http.request import RequestHead
from edgeflix.http.runner import serve_forever
from edgeflix.http.server import FileTarget, ServerSettings, bind, url_of
from edgeflix.titlefiles import FILES_JSON, TitleFilesError, check_title_id
from origin.errors import OriginError
from origin.replaced import KeptSegments, replaced_dir
from origin.store import PublishedTitle, PublishedTitles, check_store, titles_dir

# The listing has no Last-Modified, so only the entity-tag preconditions apply to it.
_TAG_CONDITIONS = ("if-match", "if-none-match")
# How long `serve` waits for the first read of the catalogue before it answers anyway: a
# small store is read by then, and its first GET /titles is complete as before; thousands
# of long titles take seconds to hash (more from a cold disk), which segments need not wait.
FIRST_READ_WAIT_S = 1.0
RETRY_AFTER_S = 1
_READING = b"the catalogue is being read: retry shortly\n"


@dataclass(frozen=True, slots=True)
class Listing:
    """`GET /titles` as sent: the plans for GET and HEAD, built once, reused per request."""

    etag: str
    get: ResponsePlan
    head: ResponsePlan


def encode_listing(titles: Sequence[PublishedTitle]) -> Listing:
    entries = [
        {
            "id": t.id,
            "title": t.title,
            "digest": t.digest,
            "duration": t.duration,
            "renditions": list(t.renditions),
            "total_bytes": t.total_bytes,
            "files_json": f"/titles/{t.id}/files.json",
            "files_json_bytes": t.files_json_bytes,
        }
        for t in titles
    ]
    body = (json.dumps({"titles": entries}, indent=2, sort_keys=True) + "\n").encode()
    # Of the bytes, not of the view: the same catalogue keeps its tag across restarts and
    # across changes that leave the listing as it was (a .replaced folder expiring).
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers: Headers = (("ETag", etag), ("Cache-Control", "no-cache"))
    get = plan_simple(200, body, "application/json", headers)
    head = plan_simple(200, body, "application/json", headers, head_only=True)
    return Listing(etag, get, head)


def plan_listing(listing: Listing, request: RequestHead) -> ResponsePlan:
    """The listing's answer to one request: 304 to a client holding the current tag."""
    headers = request.headers
    if not any(name in headers for name in _TAG_CONDITIONS):
        return listing.head if request.method == "HEAD" else listing.get
    tags = {name: headers[name] for name in _TAG_CONDITIONS if name in headers}
    outcome = evaluate(request.method, tags, listing.etag, 0)
    if outcome is Precondition.NOT_MODIFIED:
        validators: Headers = (("ETag", listing.etag), ("Cache-Control", "no-cache"))
        return ResponsePlan(304, validators + CORS, (), 0)
    if outcome is Precondition.FAILED:
        return ResponsePlan(412, (("Content-Length", "0"), *CORS), (), 0)
    return listing.head if request.method == "HEAD" else listing.get


class _FirstRead:
    """The catalogue's first read, on a thread of its own. The loop looks at what it found
    only once `done` is set (the thread writes nothing after), and then takes it over."""

    def __init__(self, catalog: PublishedTitles, view: tuple[int, ...]) -> None:
        self.view = view  # the store before the read: a change meanwhile is read again
        self.done = threading.Event()
        self.titles: list[PublishedTitle] = []
        self.error: Exception | None = None
        threading.Thread(target=self._run, args=(catalog,), name="catalogue", daemon=True).start()

    def _run(self, catalog: PublishedTitles) -> None:
        try:
            self.titles = catalog.titles()
        except Exception as exc:  # raised in the loop, where a failed look is handled
            self.error = exc
        finally:
            self.done.set()


class OriginSite:
    """Maps `/titles/<id>/<path>` onto STORE/titles/<id>/<path> for published titles only
    (a folder without a valid files.json naming it is not one); nothing else is a file.
    `background`: the first read of the catalogue runs on a thread; until it is done, every
    folder holding a files.json serves, and GET /titles answers 503."""

    def __init__(self, store: Path, background: bool = False) -> None:
        self.store = store
        self.root = titles_dir(store).resolve()
        self.catalog = PublishedTitles(store)
        self._view: tuple[int, ...] | None = None
        self._ids: frozenset[str] = frozenset()
        self._titles: list[PublishedTitle] = []
        self._listing: Listing | None = None  # encoded on first ask after each view change
        self._kept = KeptSegments(store)
        self._first: _FirstRead | None = None
        if background:
            self._first = _FirstRead(self.catalog, self._look())
            self._ids = frozenset(_title_folders(titles_dir(store)))
            self._kept.refresh({i: titles_dir(store) / i for i in self._ids})
        else:
            self.refresh()

    @property
    def ready(self) -> bool:
        """The catalogue was read once: GET /titles lists it."""
        return self._view is not None

    def _look(self) -> tuple[int, ...]:
        view: tuple[int, ...] = (0, 0, 0, 0)
        with contextlib.suppress(OSError):
            st = self.root.stat()
            view = (st.st_ino, st.st_mtime_ns, 0, 0)
            kept = replaced_dir(self.store).stat()
            view = (st.st_ino, st.st_mtime_ns, kept.st_ino, kept.st_mtime_ns)
        return view

    def refresh(self) -> object:
        """The titles folder's (inode, mtime): it moves at every publish or removal (a
        rename in it), and the server then drops the files it holds open and the routes it
        remembers: else the old title's open files would keep serving at its paths until
        the replaced folder is deleted. The segments kept for players of replaced
        versions (origin/replaced.py) are looked up again then too, and `GET /titles` is
        encoded afresh: between changes it is the same bytes, so it is kept, not rebuilt.
        While the first read runs, nothing is read here (its view is marked as such)."""
        view = self._look()
        first = self._first
        if first is not None:
            if not first.done.is_set():
                return ("reading", *view)
            self._first = None
            if first.error is not None:
                raise first.error  # the next look reads the catalogue here instead
            self._take(first.titles, first.view)
        if view != self._view:
            self._take(self.catalog.titles(), view)
        return view

    def _take(self, titles: list[PublishedTitle], view: tuple[int, ...]) -> None:
        self._kept.refresh({t.id: t.path for t in titles})
        self._ids = frozenset(t.id for t in titles)
        self._titles = titles
        self._listing = None
        self._view = view  # only once all is read: a failure is tried again next time

    def wait_first_read(self, timeout: float) -> None:
        """Up to `timeout` for the first read, taken over if it is done (its error raised)."""
        if self._first is not None and self._first.done.wait(timeout):
            self.refresh()

    def route(
        self, request: RequestHead, segments: tuple[str, ...], client_ip: str
    ) -> FileTarget | ResponsePlan:
        if segments == ("titles",):
            return self.listing(request)
        if len(segments) < 3 or segments[0] != "titles" or segments[1] not in self._ids:
            return plan_error(404, request)
        if any(part.startswith(".") for part in segments[2:]):
            return plan_error(404, request)  # no title has hidden files (.git, editor swaps)
        rel = "/".join(segments[2:])
        kept = self._kept.lookup(segments[1], rel)
        if kept is not None:  # a segment only the replaced version has, until it is due
            return FileTarget(str(kept), rel, segments[1])
        return FileTarget(str(self.root / segments[1] / rel), rel, segments[1])

    def relocate(self, target: FileTarget) -> FileTarget | None:
        """A routed file vanished, and the server has just looked at the store again. The
        one move the origin makes is a replace: a name only the old version has was routed
        to the live folder with the kept map of before the swap (up to a storage check
        ago), and answers from its kept copy now, not 404."""
        kept = self._kept.lookup(target.title_id, target.rel_path)
        if kept is None or str(kept) == target.path:  # no copy, or the copy itself went
            return None
        return FileTarget(str(kept), target.rel_path, target.title_id)

    def listing(self, request: RequestHead) -> ResponsePlan:
        if not self.ready:  # a part of the catalogue would read as titles removed
            retry: Headers = (("Retry-After", str(RETRY_AFTER_S)), ("Cache-Control", "no-store"))
            return plan_simple(503, _READING, headers=retry, head_only=request.method == "HEAD")
        listing = self._listing
        if listing is None:
            listing = self._listing = encode_listing(self._titles)
        return plan_listing(listing, request)


def serve(store: Path, host: str, port: int, settings: ServerSettings) -> None:
    """Serve until SIGTERM/SIGINT; prints `listening on URL` once the socket is bound."""
    check_store(store)
    try:
        sock = bind(host, port)
    except OSError as exc:  # taken, not ours, privileged, or a name that does not resolve
        raise OriginError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def ready() -> None:
        sys.stdout.write(f"listening on {url_of(sock)}\n")
        sys.stdout.flush()

    site = OriginSite(store, background=True)
    site.wait_first_read(FIRST_READ_WAIT_S)
    serve_forever(site, settings, sock, ready=ready, refresh=site.refresh)


def _title_folders(root: Path) -> list[str]:
    """Folders named like a title that hold a files.json: what serves while the catalogue
    is first read (a stat each, where the read parses and hashes each files.json)."""
    found = []
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            with contextlib.suppress(TitleFilesError, OSError):
                if entry.is_dir() and (root / check_title_id(entry.name) / FILES_JSON).is_file():
                    found.append(entry.name)
    return found
