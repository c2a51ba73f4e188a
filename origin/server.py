"""`edgeflix origin serve`: the origin store over HTTP for appliances to fill from.

`/titles/<id>/<path>` through the shared file-serving core (Range, ETag, sendfile) and
`GET /titles`: every published title with its files.json digest, as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgeflix.http.plan import ResponsePlan, plan_error, plan_simple
from edgeflix.http.request import RequestHead
from edgeflix.http.runner import serve_forever
from edgeflix.http.server import FileTarget, ServerSettings, bind, url_of
from edgeflix.titlefiles import TITLE_ID_RE
from origin.errors import OriginError
from origin.store import check_store, list_titles, titles_dir


class OriginSite:
    """Maps `/titles/<id>/<path>` onto STORE/titles/<id>/<path>; nothing else is a file."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.root = titles_dir(store).resolve()

    def route(
        self, request: RequestHead, segments: tuple[str, ...], client_ip: str
    ) -> FileTarget | ResponsePlan:
        if segments == ("titles",):
            return self.listing(request)
        if len(segments) < 3 or segments[0] != "titles" or not _is_title_id(segments[1]):
            return plan_error(404, request)
        rel = "/".join(segments[2:])
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
            for t in list_titles(self.store)
        ]
        body = (json.dumps({"titles": titles}, indent=2, sort_keys=True) + "\n").encode()
        return plan_simple(
            200,
            body,
            "application/json",
            (("Cache-Control", "no-cache"),),
            head_only=request.method == "HEAD",
        )


def _is_title_id(text: str) -> bool:
    # Folders such as `.tmp-<id>-…` (ingest staging) never match, so they are never served.
    return bool(TITLE_ID_RE.match(text)) and ".." not in text


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

    serve_forever(OriginSite(store), settings, sock, ready=ready)
