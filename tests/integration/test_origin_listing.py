"""`GET /titles` on a real `origin serve`: kept between changes and validated by its ETag,
changed by a publish and by `origin rm` (appliances and the fleet poll it)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from origin.store import Staging
from tests.conftest import run_cli
from tests.integration.serve_support import make_title, serving_origin


def ids(response: httpx.Response) -> list[str]:
    return [t["id"] for t in response.json()["titles"]]


def changed(client: httpx.Client, etag: str) -> httpx.Response:
    """The listing once it is no longer `etag` (the server looks at the store every 10 ms)."""
    deadline = time.monotonic() + 5
    while True:
        response = client.get("/titles", headers={"If-None-Match": etag})
        if response.status_code != 304:
            return response
        assert time.monotonic() < deadline, "the listing did not change"
        time.sleep(0.01)


def test_the_listing_is_validated_by_etag_and_changes_on_publish_and_removal(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    make_title(store / "titles" / "bunny", "bunny")
    with serving_origin(store) as server, httpx.Client(base_url=server.url) as client:
        first = client.get("/titles")
        assert first.status_code == 200 and ids(first) == ["bunny"]
        etag = first.headers["etag"]
        again = client.get("/titles")
        assert again.headers["etag"] == etag and again.content == first.content
        held = client.get("/titles", headers={"If-None-Match": etag})
        assert held.status_code == 304 and held.content == b""
        assert held.headers["etag"] == etag
        head = client.head("/titles")
        assert head.headers["content-length"] == str(len(first.content))

        with Staging(store, "bikes", replace=False) as staging:
            make_title(tmp_path / "new" / "bikes", "bikes")
            shutil.copytree(tmp_path / "new" / "bikes", staging.title_dir, dirs_exist_ok=True)
            staging.publish()
        published = changed(client, etag)
        assert published.status_code == 200 and ids(published) == ["bikes", "bunny"]
        assert published.headers["etag"] != etag

        run_cli(["origin", "rm", "--id", "bikes", "--store", str(store)], check=True, timeout=60)
        removed = changed(client, published.headers["etag"])
        assert ids(removed) == ["bunny"]
        assert removed.headers["etag"] == etag  # the same catalogue: the same bytes and tag
