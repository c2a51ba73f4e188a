"""`edgeflix origin serve`: the origin store over HTTP for appliances to fill from.

`/titles/<id>/<path>` through the shared file-serving core (Range, ETag, sendfile) and
`GET /titles`: every published title with its files.json digest, as JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from edgeflix.http.plan import ResponsePlan, plan_error, plan_simple
from edgeflix.http.request import RequestHead
from edgeflix.http.runner import serve_forever
from edgeflix.http.server import FileTarget, ServerSettings, bind, url_of
from origin.errors import OriginError
from origin.replaced import KeptSegments, replaced_dir
from origin.store import PublishedTitles, check_store, titles_dir


class OriginSite:
    """Maps `/titles/<id>/<path>` onto STORE/titles/<id>/<path> for published titles only
    (a folder without a valid files.json naming it is not one); nothing else is a file."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.root = titles_dir(store).resolve()
        self.catalog = PublishedTitles(store)
        self._view: tuple[int, ...] | None = None
        self._ids: frozenset[str] = frozenset()
        self._kept = KeptSegments(store)
        self.refresh()

    def refresh(self) -> object:
        """The titles folder's (inode, mtime): it moves at every publish or removal (a
        rename in it), and the server then drops the files it holds open and the routes it
        remembers: else the old title's open files would keep serving at its paths until
        the replaced folder is deleted. The segments kept for players of replaced
        versions (origin/replaced.py) are looked up again then too."""
        view: tuple[int, ...] = (0, 0, 0, 0)
        with contextlib.suppress(OSError):
            st = self.root.stat()
            view = (st.st_ino, st.st_mtime_ns, 0, 0)
            kept = replaced_dir(self.store).stat()
            view = (st.st_ino, st.st_mtime_ns, kept.st_ino, kept.st_mtime_ns)
        if view != self._view:
            titles = self.catalog.titles()
            self._kept.refresh({t.id: t.path for t in titles})
            self._ids = frozenset(t.id for t in titles)
            self._view = view  # only once all is read: a failure is tried again next time
        return view

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
        return None  # the origin never moves files behind a request

    def listing(self, request: RequestHead) -> ResponsePlan:
        titles = [
            {
                "id": t.id,
                "title": t.title,
                "digest": t.digest,
                "duration": t.duration,
                "renditions": list(t.renditions),
                "total_bytes": t.total_bytes,
                "files_json": f"/titles/{t.id}/files.json",
            }
            for t in self.catalog.titles()
        ]
        body = (json.dumps({"titles": titles}, indent=2, sort_keys=True) + "\n").encode()
        return plan_simple(
            200,
            body,
            "application/json",
            (("Cache-Control", "no-cache"),),
            head_only=request.method == "HEAD",
        )


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

    site = OriginSite(store)
    serve_forever(site, settings, sock, ready=ready, refresh=site.refresh)
