"""`edgeflix origin serve`: the store over real HTTP, with sendfile and with the fallback."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeflix import titlefiles
from origin.store import Staging
from tests.conftest import run_cli
from tests.integration.serve_support import Server, make_title, raw, start


@pytest.fixture(scope="module", params=["sendfile", "no-sendfile"])
def origin(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    store = tmp_path_factory.mktemp("store")
    make_title(store / "titles" / "bunny", "bunny")
    (store / "titles" / ".tmp-bunny-x").mkdir()  # staging folders are never served
    (store / "titles" / ".tmp-bunny-x" / "secret").write_text("no")
    (store / "titles" / "unpublished").mkdir()  # no files.json: not a title
    (store / "titles" / "unpublished" / "notes.txt").write_text("no")
    (store / "titles" / "bunny" / ".git-credentials").write_text("no")
    server = start(
        ["origin", "serve", "--store", str(store), "--listen", "127.0.0.1:0", f"--{request.param}"],
        ("listening",),
    )
    yield server, store
    assert server.stop() == 0


def test_whole_file_range_and_etag(origin: tuple[Server, Path]) -> None:
    server, store = origin
    seg = (store / "titles/bunny/v0/seg1.m4s").read_bytes()
    with httpx.Client(base_url=server.url) as client:
        full = client.get("/titles/bunny/v0/seg1.m4s")
        assert full.status_code == 200 and full.content == seg
        assert full.headers["content-type"] == "video/iso.segment"
        part = client.get("/titles/bunny/v0/seg1.m4s", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == seg[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(seg)}"
        again = client.get(
            "/titles/bunny/v0/seg1.m4s", headers={"If-None-Match": full.headers["etag"]}
        )
        assert again.status_code == 304 and again.content == b""
        resume = client.get("/titles/bunny/v0/seg1.m4s", headers={"Range": "bytes=299000-"})
        assert resume.content == seg[299000:]


def test_titles_listing_carries_digests(origin: tuple[Server, Path]) -> None:
    server, store = origin
    listing = httpx.get(server.url + "/titles").json()
    _, digest = titlefiles.read(store / "titles" / "bunny")
    assert [(t["id"], t["digest"]) for t in listing["titles"]] == [("bunny", digest)]
    files = httpx.get(server.url + listing["titles"][0]["files_json"])
    assert titlefiles.digest_bytes(files.content) == digest
    # What an appliance stores of it, for the fleet's plans: the media and files.json.
    assert listing["titles"][0]["files_json_bytes"] == len(files.content)


@pytest.mark.parametrize(
    "path",
    [
        "/titles/bunny/../bunny/files.json",
        "/titles/bunny/%2e%2e/%2e%2e/etc/passwd",
        "/titles/bunny/..%2f..%2fetc%2fpasswd",
        "/titles/bunny/%252e%252e/x",
        "/titles/bunny/..\\..\\x",
    ],
)
def test_traversal_refused(origin: tuple[Server, Path], path: str) -> None:
    server, _ = origin
    answer = raw(server.addr, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_staging_and_unknown_are_404(origin: tuple[Server, Path]) -> None:
    server, _ = origin
    assert httpx.get(server.url + "/titles/.tmp-bunny-x/secret").status_code == 404
    assert httpx.get(server.url + "/titles/nope/master.m3u8").status_code == 404
    assert httpx.get(server.url + "/titles/bunny/v0").status_code == 404  # a folder
    assert httpx.get(server.url + "/titles/unpublished/notes.txt").status_code == 404
    assert httpx.get(server.url + "/titles/bunny/.git-credentials").status_code == 404


def test_a_replaced_title_is_served_new_from_the_moment_it_is_published(tmp_path: Path) -> None:
    """Publishing swaps the title's folder with the new one and deletes the old one after;
    meanwhile files the server held open (its file cache) must not keep serving the old
    bytes at the title's paths."""
    make_title(tmp_path / "titles" / "bunny", "bunny")
    server = start(
        ["origin", "serve", "--store", str(tmp_path), "--listen", "127.0.0.1:0"], ("listening",)
    )
    try:
        names = ("files.json", "v0/init.mp4", "v0/seg1.m4s")
        for name in names:  # now open in the server's file cache
            assert httpx.get(f"{server.url}/titles/bunny/{name}").status_code == 200
        with Staging(tmp_path, "bunny", replace=True) as staging:
            make_title(tmp_path / "new" / "bunny", "bunny")  # random bytes: all new
            shutil.copytree(tmp_path / "new" / "bunny", staging.title_dir, dirs_exist_ok=True)
            staging.publish()  # the old folder is parked, still whole, until the with ends
            live = tmp_path / "titles" / "bunny"
            deadline = time.monotonic() + 5
            for name in names:
                want = (live / name).read_bytes()
                while httpx.get(f"{server.url}/titles/bunny/{name}").content != want:
                    assert time.monotonic() < deadline, f"{name}: still the old bytes"
                    time.sleep(0.01)
    finally:
        assert server.stop() == 0


def test_a_file_that_fails_to_open_is_500_not_404(origin: tuple[Server, Path]) -> None:
    """A failure of the box (here ENXIO: a device node whose driver is not there, standing in
    for a dying disk's EIO, which cannot be made on demand) is a 5xx, as nginx answers it:
    the player moves on to its next URL, and nothing caches an absence. Not ours to serve
    (a folder, a symlink) stays 404."""
    server, store = origin
    node = store / "titles" / "bunny" / "v0" / "dead.m4s"
    if not node.exists():
        try:
            os.mknod(node, 0o644 | stat.S_IFCHR, os.makedev(250, 123))
        except PermissionError:
            pytest.skip("making a device node needs root")
    assert httpx.get(server.url + "/titles/bunny/v0/dead.m4s").status_code == 500
    link = store / "titles" / "bunny" / "v0" / "link.m4s"
    if not link.is_symlink():
        link.symlink_to(store / "titles" / "bunny" / "files.json")
    assert httpx.get(server.url + "/titles/bunny/v0/link.m4s").status_code == 404
    assert httpx.get(server.url + "/titles/bunny/files.json").status_code == 200


def test_a_player_on_the_replaced_version_gets_its_segments(
    tmp_path: Path, bunny: Path, bikes: Path
) -> None:
    """A real re-ingest under the same id: the old segment names keep answering from the
    origin (origin/replaced.py) while files.json and the playlists are the new version's."""
    store = tmp_path / "store"

    def ingest(src: Path, *extra: str) -> None:
        run_cli(["origin", "ingest", str(src), "--id", "film", "--title", "Film", "--store",
                 str(store), *extra], check=True, timeout=300)  # fmt: skip

    ingest(bikes)
    old_model, _ = titlefiles.read(store / "titles" / "film")
    old = {e.path: (store / "titles" / "film" / e.path).read_bytes() for e in old_model.files}
    server = start(
        ["origin", "serve", "--store", str(store), "--listen", "127.0.0.1:0"], ("listening",)
    )
    try:
        ingest(bunny, "--replace")
        new_model, _ = titlefiles.read(store / "titles" / "film")
        gone = sorted(set(old) - {e.path for e in new_model.files})
        assert any(rel.endswith(".m4s") for rel in gone)
        # The old rendition playlists too (index_<tag>.m3u8): a player switching variant
        # with the old master.m3u8 in hand gets the version it started on.
        assert any(rel.endswith(".m3u8") for rel in gone)
        for rel in gone:
            if rel.endswith((".m4s", ".mp4", ".m3u8")):
                got = httpx.get(f"{server.url}/titles/film/{rel}")
                assert got.status_code == 200 and got.content == old[rel], rel
        files_json = httpx.get(f"{server.url}/titles/film/files.json")
        assert files_json.content == (store / "titles" / "film" / "files.json").read_bytes()
    finally:
        assert server.stop() == 0
