"""`GET /titles` of `origin serve` (origin/server.py): encoded once per view of the store,
answered from memory with an ETag in between, encoded again after a publish or removal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeflix.http.plan import ResponsePlan
from edgeflix.http.request import RequestHead
from origin.server import OriginSite
from origin.store import PublishedTitle, remove_title
from tests.integration.serve_support import make_title


def ask(site: OriginSite, method: str = "GET", **headers: str) -> ResponsePlan:
    head = RequestHead(method, "/titles", "/titles", "", 1, headers, True)
    plan = site.route(head, ("titles",), "127.0.0.1")
    assert isinstance(plan, ResponsePlan)
    return plan


def header(plan: ResponsePlan, name: str) -> str:
    return dict(plan.headers)[name]


def ids(plan: ResponsePlan) -> list[str]:
    body = plan.body[0]
    assert isinstance(body, bytes)
    return [t["id"] for t in json.loads(body)["titles"]]


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[OriginSite, list[int]]:
    """A site over a one-title store, counting its reads of the catalogue."""
    make_title(tmp_path / "titles" / "bunny", "bunny")
    site = OriginSite(tmp_path)
    calls = [0]
    read = site.catalog.titles

    def titles() -> list[PublishedTitle]:
        calls[0] += 1
        return read()

    monkeypatch.setattr(site.catalog, "titles", titles)
    return site, calls


def test_a_repeated_listing_is_the_same_bytes_not_read_again(
    counted: tuple[OriginSite, list[int]],
) -> None:
    site, calls = counted
    first = ask(site)
    site.refresh()  # the server's periodic look: nothing changed
    second = ask(site)
    assert calls[0] == 0  # neither request nor look read the catalogue again
    assert second.body[0] is first.body[0]
    assert header(second, "ETag") == header(first, "ETag")
    assert ids(first) == ["bunny"]


def test_a_publish_and_a_removal_change_the_listing_and_its_tag(
    tmp_path: Path, counted: tuple[OriginSite, list[int]]
) -> None:
    site, calls = counted
    before = header(ask(site), "ETag")
    make_title(tmp_path / "new" / "bikes", "bikes")
    (tmp_path / "new" / "bikes").rename(tmp_path / "titles" / "bikes")  # as a publish does
    site.refresh()
    published = ask(site)
    assert ids(published) == ["bikes", "bunny"]
    assert header(published, "ETag") != before
    assert calls[0] == 1
    remove_title(tmp_path, "bikes")
    site.refresh()
    removed = ask(site)
    assert ids(removed) == ["bunny"]
    assert header(removed, "ETag") == before  # the same catalogue again: the same bytes
    assert calls[0] == 2


def test_conditionals_on_the_listing(counted: tuple[OriginSite, list[int]]) -> None:
    site, _ = counted
    etag = header(ask(site), "ETag")
    same = ask(site, **{"if-none-match": f'"other", {etag}'})
    assert same.status == 304 and same.body == () and header(same, "ETag") == etag
    assert ask(site, **{"if-none-match": f"W/{etag}"}).status == 304  # weak comparison
    assert ask(site, **{"if-none-match": '"other"'}).status == 200
    assert ask(site, **{"if-match": '"other"'}).status == 412
    assert ask(site, **{"if-match": etag}).status == 200
    # No Last-Modified: a date cannot make it "not modified".
    assert ask(site, **{"if-modified-since": "Fri, 01 Jan 2100 00:00:00 GMT"}).status == 200
    head = ask(site, "HEAD")
    assert head.status == 200 and head.body == ()
    assert header(head, "Content-Length") == header(ask(site), "Content-Length")


def test_an_empty_store_lists_nothing(tmp_path: Path) -> None:
    plan = ask(OriginSite(tmp_path / "not-yet"))
    assert plan.status == 200 and plan.body == (b'{\n  "titles": []\n}\n',)
    assert header(plan, "ETag").startswith('"')
