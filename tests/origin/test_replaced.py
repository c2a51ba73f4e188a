"""`ingest --replace` keeps the old version's segments for the players still on it
(origin/replaced.py): linked aside before the swap, answered by `origin serve` for names
the new version lacks, deleted by the first ingest after their time is up."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgeflix.errors import EdgeflixError
from edgeflix.http.content import content_tag, init_name, segment_name
from edgeflix.http.request import RequestHead
from edgeflix.http.server import FileTarget
from origin import replaced
from origin.errors import StoreError
from origin.server import OriginSite
from origin.store import REMOVED, Staging, clean_stale, list_titles, remove_title
from tests.origin.test_store import seal

NOW = 1_800_000_000.0


def build(staging: Staging, version: str, shared: str = "") -> dict[str, bytes]:
    """A title with one rendition named after `version` (its content), one named after
    `shared` when given (bytes both versions have), a playlist and files.json."""
    files: dict[str, bytes] = {"master.m3u8": f"#EXTM3U\n# {version}\n".encode()}
    for rendition, content in (("v0", version), ("v1", shared)):
        if not content:
            continue
        tag = content_tag(hashlib.sha256(content.encode()).hexdigest())
        files[f"{rendition}/{init_name(tag)}"] = f"init {content}".encode()
        for n in range(3):
            files[f"{rendition}/{segment_name(tag, n)}"] = f"{content} {n}".encode() * 100
    for rel, body in files.items():
        (staging.title_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging.title_dir / rel).write_bytes(body)
    seal(staging, version)
    return files


def publish(
    store: Path, version: str, shared: str = "", now: float = NOW, keep_s: float = replaced.KEEP_S
) -> dict[str, bytes]:
    with Staging(store, "film", replace=True, clock=lambda: now, keep_s=keep_s) as staging:
        files = build(staging, version, shared)
        staging.publish()
    return files


def route(site: OriginSite, rel: str) -> object:
    path = f"/titles/film/{rel}"
    head = RequestHead("GET", path, path, "", 1, {}, True)
    return site.route(head, ("titles", "film", *rel.split("/")), "127.0.0.1")


def served(site: OriginSite, rel: str) -> bytes | None:
    site.refresh()
    target = route(site, rel)
    if not isinstance(target, FileTarget):
        return None
    try:
        return Path(target.path).read_bytes()
    except FileNotFoundError:
        return None


def test_old_segments_answer_for_players_on_the_old_version(tmp_path: Path) -> None:
    old = publish(tmp_path, "one", shared="same")
    site = OriginSite(tmp_path)
    new = publish(tmp_path, "two", shared="same", now=NOW + 60)
    gone = sorted(set(old) - set(new))
    assert gone and all(rel.startswith("v0/") for rel in gone)
    for rel in gone:  # only the old version had these names
        assert served(site, rel) == old[rel]
    for rel in new:
        assert served(site, rel) == new[rel]
    assert served(site, "master.m3u8") == new["master.m3u8"]
    # Only what the new version lacks was kept: v1 (shared) and the playlist were not.
    (folder,) = replaced.replaced_dir(tmp_path).iterdir()
    kept = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert kept == set(gone)
    assert [t.title for t in list_titles(tmp_path)] == ["two"]


def test_kept_segments_go_with_the_first_ingest_after_their_time(tmp_path: Path) -> None:
    old = publish(tmp_path, "one")
    publish(tmp_path, "two", now=NOW + 60)
    site = OriginSite(tmp_path)
    rel = sorted(r for r in old if r.endswith(".m4s"))[0]
    assert served(site, rel) == old[rel]
    # Still kept by an ingest within the time; gone with one after it.
    publish(tmp_path, "two", now=NOW + 120)
    assert served(site, rel) == old[rel]
    publish(tmp_path, "three", now=NOW + 60 + replaced.KEEP_S + 1)
    assert served(site, rel) is None
    names = [p.name for p in replaced.replaced_dir(tmp_path).iterdir()]
    assert len(names) == 1 and names[0].startswith("film~")  # only two's, kept for three's


def test_the_keep_time_is_a_setting_and_0_keeps_nothing(tmp_path: Path) -> None:
    publish(tmp_path, "one")
    publish(tmp_path, "two", now=NOW + 60, keep_s=90)
    (folder,) = replaced.replaced_dir(tmp_path).iterdir()
    assert replaced.parse(folder.name) == ("film", NOW + 60 + 90)
    publish(tmp_path, "three", now=NOW + 120, keep_s=0)
    site = OriginSite(tmp_path)
    assert [p.name for p in replaced.replaced_dir(tmp_path).iterdir()] == [folder.name]
    two_only = {rel for rel in publish(tmp_path / "x", "two") if rel.endswith(".m4s")}
    assert two_only and all(served(site, rel) is None for rel in two_only)


def test_a_name_the_live_version_has_again_answers_from_it(tmp_path: Path) -> None:
    one = publish(tmp_path, "one")
    publish(tmp_path, "two", now=NOW + 60)
    back = publish(tmp_path, "one", now=NOW + 120)  # same bytes as one: same names
    site = OriginSite(tmp_path)
    for rel in back:
        target = route(site, rel)
        assert isinstance(target, FileTarget)
        assert "/titles/film/" in target.path and Path(target.path).read_bytes() == one[rel]


def test_a_store_where_nothing_can_be_kept_still_publishes(tmp_path: Path) -> None:
    publish(tmp_path, "one")
    replaced.replaced_dir(tmp_path).write_text("not a folder")  # linking under it fails
    with Staging(tmp_path, "film", replace=True, clock=lambda: NOW) as staging:
        build(staging, "two")
        staging.publish()
    assert staging.keep_error is not None and staging.kept == 0
    assert [t.title for t in list_titles(tmp_path)] == ["two"]


def test_odd_names_under_replaced_are_swept_not_a_traceback(tmp_path: Path) -> None:
    publish(tmp_path, "one")
    root = replaced.replaced_dir(tmp_path)
    root.mkdir()
    for name in ("film~²~x", "film~1e3~ab", "junk"):  # '²'.isdigit(), float('²') raises
        (root / name).mkdir()
    (root / "stray.txt").write_text("x")
    site = OriginSite(tmp_path)  # reads .replaced: no traceback
    assert served(site, "master.m3u8") is not None
    publish(tmp_path, "two", now=NOW + 60)  # the ingest's sweep takes them all
    assert sorted(p.name.split("~")[0] for p in root.iterdir()) == ["film"]
    assert replaced.parse("film~²~x") is None and replaced.parse("film~17~0a") == ("film", 17.0)


def test_a_running_server_stops_answering_kept_segments_when_due(tmp_path: Path) -> None:
    old = publish(tmp_path, "one")
    publish(tmp_path, "two", now=NOW + 60)
    rel = sorted(r for r in old if r.endswith(".m4s"))[0]
    kept = replaced.KeptSegments(tmp_path)
    kept.refresh({t.id: t.path for t in list_titles(tmp_path)})
    due = NOW + 60 + replaced.KEEP_S
    assert kept.lookup("film", rel, lambda: due - 1) is not None
    assert kept.lookup("film", rel, lambda: due + 1) is None  # no new ingest needed to stop it


def test_refreshing_reads_each_files_json_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of long titles: every publish or sweep refreshes the kept map on the server's
    loop, so unchanged files.json and kept folders must not be read again (a review saw
    1.7 s stalls with five long titles replaced)."""
    publish(tmp_path, "one")
    publish(tmp_path, "two", now=NOW + 60)
    reads: list[Path] = []
    real = replaced.read

    def counting(folder: Path) -> object:
        reads.append(folder)
        return real(folder)

    monkeypatch.setattr(replaced, "read", counting)
    kept = replaced.KeptSegments(tmp_path)
    live = {t.id: t.path for t in list_titles(tmp_path)}
    for _ in range(3):
        kept.refresh(live)
    assert len(reads) == 1
    publish(tmp_path, "three", now=NOW + 120)
    kept.refresh({t.id: t.path for t in list_titles(tmp_path)})
    assert len(reads) == 2  # the new version's, once


def test_a_server_refreshing_while_segments_are_linked_aside_sees_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`origin serve` refreshes every few ms and walks a kept folder once: one it saw half
    linked (a long film has thousands of segments) would answer 404 for the rest for hours.
    Here it refreshes after every single link."""
    old = publish(tmp_path, "one")
    kept = replaced.KeptSegments(tmp_path)
    real_link = os.link

    def link_then_refresh(src: object, dst: object) -> None:
        real_link(src, dst)  # type: ignore[arg-type]
        kept.refresh({t.id: t.path for t in list_titles(tmp_path)})

    monkeypatch.setattr(os, "link", link_then_refresh)
    new = publish(tmp_path, "two", now=NOW + 60)
    monkeypatch.undo()
    kept.refresh({t.id: t.path for t in list_titles(tmp_path)})
    gone = sorted(set(old) - set(new) - {"master.m3u8"})
    assert gone and all(kept.lookup("film", rel, lambda: NOW + 120) is not None for rel in gone)


def test_removing_a_title_takes_it_and_its_kept_segments_away(tmp_path: Path) -> None:
    publish(tmp_path, "one")
    publish(tmp_path, "two", now=NOW + 60)
    site = OriginSite(tmp_path)
    assert any(replaced.replaced_dir(tmp_path).iterdir())
    live = tmp_path / "titles" / "film"
    held = sum(p.stat().st_size for p in live.rglob("*") if p.is_file())
    assert remove_title(tmp_path, "film") == held
    assert list_titles(tmp_path) == [] and not any(replaced.replaced_dir(tmp_path).iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    assert served(site, "master.m3u8") is None
    with pytest.raises(StoreError, match="no title 'film'"):
        remove_title(tmp_path, "film")


def test_a_removal_cut_short_is_finished_not_undone(tmp_path: Path) -> None:
    publish(tmp_path, "one")
    staging = Staging(tmp_path, "film", replace=True).__enter__()
    os.rename(staging.target, staging.root / REMOVED)
    assert staging._fd is not None
    os.close(staging._fd)  # the process died here: its lock is free, its folder left
    assert clean_stale(tmp_path) == [staging.root.name]
    assert list_titles(tmp_path) == [] and not (tmp_path / "titles" / "film").exists()


def test_remove_refuses_ids_and_stores_that_are_not_there(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no title"):
        remove_title(tmp_path / "nowhere", "film")
    assert not (tmp_path / "nowhere").exists()  # a typo makes no store
    with pytest.raises(EdgeflixError):
        remove_title(tmp_path, "../film")
