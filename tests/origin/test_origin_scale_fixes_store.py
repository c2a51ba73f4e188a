"""The origin's catalogue at scale: `origin ls` and `GET /titles` read each title's
header and hash, not its list of files (checked when it was published), and `origin serve`
answers segments while its first read of a large store runs, `GET /titles` 503 until then."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from edgeflix import titlefiles
from edgeflix.http.plan import ResponsePlan
from edgeflix.http.request import RequestHead
from edgeflix.http.server import FileTarget
from origin import server as origin_server
from origin.server import OriginSite
from origin.store import PublishedTitle, PublishedTitles, list_titles
from tests.edgeflix.test_origin_scale_fixes_titlefiles import python_calls


def long_title(folder: Path, title_id: str, segments: int) -> Path:
    """A packaged title of `segments` segments in each of 3 renditions, real files and a
    real files.json (as the origin writes it)."""
    for name in ("v0", "v1", "a0"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "init_0a1b2c3d4e5f.mp4").write_bytes(b"init" + name.encode())
        for n in range(segments):
            (folder / name / f"seg_0a1b2c3d4e5f_{n:05d}.m4s").write_bytes(b"%d" % n)
    (folder / "master.m3u8").write_text("#EXTM3U\n")
    files = titlefiles.scan(folder)
    model = titlefiles.TitleFiles(
        id=title_id,
        title=f"Title {title_id}",
        duration=4.0 * segments,
        segment_seconds=4.0,
        created="2026-01-01T00:00:00Z",
        renditions=tuple(rendition(r) for r in ("v0", "v1", "a0")),
        files=tuple(files),
        total_bytes=sum(f.size for f in files),
    )
    (folder / titlefiles.FILES_JSON).write_bytes(titlefiles.render(model))
    return folder


def rendition(rendition_id: str) -> titlefiles.RenditionInfo:
    kind = "audio" if rendition_id.startswith("a") else "video"
    return titlefiles.RenditionInfo(
        id=rendition_id, kind=kind, codec="h264", codecs="avc1.64001f", bandwidth=1,
        average_bandwidth=1,
    )  # fmt: skip


def expected(folder: Path) -> dict[str, object]:
    """A title as `origin ls --json` lists it, from the full read of its files.json (every
    entry checked)."""
    model, digest = titlefiles.read(folder)
    raw = (folder / titlefiles.FILES_JSON).read_bytes()
    assert digest == hashlib.sha256(raw).hexdigest()
    return {"id": model.id, "title": model.title, "duration": model.duration,
            "renditions": [r.id for r in model.renditions],
            "total_bytes": model.total_bytes, "digest": digest}  # fmt: skip


def listed(title: PublishedTitle) -> dict[str, object]:
    return {"id": title.id, "title": title.title, "duration": title.duration,
            "renditions": list(title.renditions), "total_bytes": title.total_bytes,
            "digest": title.digest}  # fmt: skip


def broken_titles(root: Path, good: Path) -> list[str]:
    """Folders today's listing leaves out, each broken in its header or beside it."""
    raw = (good / titlefiles.FILES_JSON).read_bytes()
    data = json.loads(raw)
    cases = {
        "junk": None,  # no files.json
        "garbage": b"\x00not json",
        "cut": raw[: len(raw) // 2],  # a half-written copy
        "copy": raw,  # names another folder
        "future": json.dumps({**data, "id": "future", "format": 2}).encode(),
        "negative": json.dumps({**data, "id": "negative", "duration": -1}).encode(),
        "nolist": json.dumps({**data, "id": "nolist", "files": None}).encode(),
        "extra": json.dumps({**data, "id": "extra", "surprise": True}).encode(),
    }
    for name, content in cases.items():
        (root / name).mkdir(parents=True)
        if content is not None:
            (root / name / titlefiles.FILES_JSON).write_bytes(content)
    return list(cases)


def test_the_listing_is_what_a_full_read_gives_and_broken_titles_stay_out(
    tmp_path: Path,
) -> None:
    root = tmp_path / "titles"
    good = [long_title(root / f"t{n}", f"t{n}", 100 + 50 * n) for n in range(3)]
    broken_titles(root, good[0])
    assert [listed(t) for t in list_titles(tmp_path)] == [expected(f) for f in good]


def test_the_listing_does_not_step_through_each_entry(tmp_path: Path) -> None:
    """Before: each listing parsed and checked every entry of every files.json (seconds
    per hundred long titles); now its Python work is the same for 10 or 1,000 segments."""
    for store, segments in (("short", 10), ("long", 1000)):
        for n in range(3):
            long_title(tmp_path / store / "titles" / f"t{n}", f"t{n}", segments)
    short = python_calls(lambda: list_titles(tmp_path / "short"))
    long = python_calls(lambda: list_titles(tmp_path / "long"))
    assert long - short <= 30, f"{long - short} more Python calls for 2,970 more entries each"


# -- origin serve's first read -------------------------------------------------------------


def ask(site: OriginSite, path: str, method: str = "GET") -> ResponsePlan | FileTarget:
    head = RequestHead(method, path, path, "", 1, {}, True)
    return site.route(head, tuple(path.strip("/").split("/")), "127.0.0.1")


def status(answer: ResponsePlan | FileTarget) -> int:
    return 200 if isinstance(answer, FileTarget) else answer.status


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The catalogue's reads wait for this event (as reading thousands of titles would)."""
    release = threading.Event()
    read = PublishedTitles.titles

    def slow(self: PublishedTitles) -> list[PublishedTitle]:
        assert release.wait(30), "the test never released the read"
        return read(self)

    monkeypatch.setattr(PublishedTitles, "titles", slow)
    return release


def test_segments_answer_while_the_first_read_runs(tmp_path: Path, held: threading.Event) -> None:
    long_title(tmp_path / "titles" / "bunny", "bunny", 20)
    (tmp_path / "titles" / "junk").mkdir()
    site = OriginSite(tmp_path, background=True)
    site.wait_first_read(0.05)  # not done: serve goes on without it
    assert not site.ready
    for method in ("GET", "HEAD"):
        waiting = ask(site, "/titles", method)
        assert isinstance(waiting, ResponsePlan) and waiting.status == 503
        assert dict(waiting.headers)["Retry-After"] == "1"
        assert (waiting.body == ()) == (method == "HEAD")
    site.refresh()  # the server's periodic look takes nothing over yet
    segment = ask(site, "/titles/bunny/v0/seg_0a1b2c3d4e5f_00003.m4s")
    assert isinstance(segment, FileTarget) and Path(segment.path).read_bytes() == b"3"
    assert status(ask(site, "/titles/junk/x")) == 404  # no files.json: no title
    assert status(ask(site, "/titles/nope/x")) == 404

    held.set()
    for _ in range(3000):  # bounded: the thread ends as soon as it is released
        site.refresh()
        if site.ready:
            break
        time.sleep(0.01)
    listing = ask(site, "/titles")
    assert isinstance(listing, ResponsePlan) and listing.status == 200
    body = listing.body[0]
    assert isinstance(body, bytes)
    assert [t["id"] for t in json.loads(body)["titles"]] == ["bunny"]
    assert status(ask(site, "/titles/bunny/master.m3u8")) == 200


def test_a_small_store_is_read_before_the_first_answer(tmp_path: Path) -> None:
    long_title(tmp_path / "titles" / "bunny", "bunny", 5)
    site = OriginSite(tmp_path, background=True)
    site.wait_first_read(origin_server.FIRST_READ_WAIT_S * 30)  # bounded; done in ms
    assert site.ready and status(ask(site, "/titles")) == 200


def test_a_failed_first_read_is_raised_and_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_title(tmp_path / "titles" / "bunny", "bunny", 5)
    read = PublishedTitles.titles
    failures = [OSError(5, "Input/output error")]

    def failing(self: PublishedTitles) -> list[PublishedTitle]:
        if failures:
            raise failures.pop()
        return read(self)

    monkeypatch.setattr(PublishedTitles, "titles", failing)
    site = OriginSite(tmp_path, background=True)
    with pytest.raises(OSError, match="Input/output"):
        site.wait_first_read(30)  # as `serve` started before: the error, not a listing
    assert status(ask(site, "/titles")) == 503  # never an empty catalogue meanwhile
    site.refresh()  # the next look reads it, in the loop
    assert site.ready and status(ask(site, "/titles")) == 200
