"""Ingest the real sample clips through the CLI and check the title as a player would."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import av
import m3u8
import pytest

from edgeflix import titlefiles
from edgeflix.http.content import IMMUTABLE, cache_control
from tests.conftest import media_playlist, run_cli

SEGMENT = 2.0
NS = "{urn:mpeg:dash:schema:mpd:2011}"


def ingest(src: Path, store: Path, title_id: str, *extra: str) -> dict[str, Any]:
    proc = run_cli(
        ["origin", "ingest", str(src), "--id", title_id, "--title", f"Title {title_id}",
         "--store", str(store), "--segment-seconds", str(SEGMENT), "--json", *extra],
        check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def bunny_title(tmp_path_factory: pytest.TempPathFactory, bunny: Path) -> tuple[Path, dict]:
    store = tmp_path_factory.mktemp("origin-bunny")
    return store, ingest(bunny, store, "bunny", "--heights", "720,360")


@pytest.fixture(scope="session")
def bikes_title(tmp_path_factory: pytest.TempPathFactory, bikes: Path) -> tuple[Path, dict]:
    store = tmp_path_factory.mktemp("origin-bikes")
    return store, ingest(bikes, store, "bikes")


def source_frames(src: Path) -> int:
    with av.open(str(src)) as c:
        return sum(1 for _ in c.decode(video=0))


def open_bytes(data: bytes) -> Any:
    return av.open(io.BytesIO(data), "r")


def check_as_player(title_dir: Path, src: Path) -> None:
    model, _ = titlefiles.read(title_dir)
    assert titlefiles.verify(title_dir, model) == []
    on_disk = {e.path for e in titlefiles.scan(title_dir)}
    assert on_disk == {f.path for f in model.files}
    assert (
        model.total_bytes
        == sum(p.stat().st_size for p in title_dir.rglob("*") if p.is_file())
        - (title_dir / "files.json").stat().st_size
    )

    master = m3u8.load(str(title_dir / "master.m3u8"))
    assert master.is_variant and master.playlists
    frames = source_frames(src)
    boundaries = []
    for variant in master.playlists:
        info = variant.stream_info
        assert info.bandwidth >= info.average_bandwidth > 0
        assert info.codecs.startswith("avc1.") and info.resolution and info.frame_rate == 25.0
        folder = title_dir / Path(variant.uri).parent
        media = m3u8.load(str(title_dir / variant.uri))
        init = (folder / media.segment_map[0].uri).read_bytes()
        durations = [s.duration for s in media.segments]
        for d in durations[:-1]:
            assert abs(d - SEGMENT) <= 0.1 * SEGMENT
        assert durations[-1] <= SEGMENT * 1.1
        starts = []
        for seg in media.segments:
            with open_bytes(init + (folder / seg.uri).read_bytes()) as c:
                packets = [p for p in c.demux(video=0) if p.size]
                assert packets[0].is_keyframe, f"{variant.uri} {seg.uri} opens on a non-keyframe"
                # The opening keyframe's decode time (tfdt): FFmpeg's demuxer, reading a lone
                # segment, shifts presentation times by the most negative composition offset
                # it saw in that segment, which differs with each rendition's last B-frames.
                starts.append(packets[0].dts * packets[0].time_base)
        boundaries.append([t - starts[0] for t in starts])
        whole = init + b"".join((folder / s.uri).read_bytes() for s in media.segments)
        with open_bytes(whole) as c:
            decoded = list(c.decode(video=0))
        assert len(decoded) == frames
        w, h = info.resolution
        assert (decoded[0].width, decoded[0].height) == (w, h)
    assert all(b == boundaries[0] for b in boundaries), "segment boundaries differ"
    assert model.duration == pytest.approx(frames / 25, abs=0.05)

    root = ET.parse(title_dir / "manifest.mpd").getroot()
    reps = {r.get("id"): r for r in root.iter(f"{NS}Representation")}
    video_ids = {str(Path(v.uri).parent) for v in master.playlists}
    assert video_ids <= set(reps)
    for rep_id in video_ids:
        folder = title_dir / rep_id
        timeline = reps[rep_id].find(f"{NS}SegmentTemplate/{NS}SegmentTimeline")
        assert timeline is not None
        count = sum(int(s.get("r", "0")) + 1 for s in timeline)
        assert count == len(list(folder.glob("seg_*.m4s")))
    assert {r.id for r in model.renditions} == set(reps)
    with av.open(str(title_dir / "poster.jpg")) as c:
        assert c.streams.video[0].codec_context.name == "mjpeg"


def test_bunny_title_plays(bunny_title: tuple[Path, dict], bunny: Path) -> None:
    store, summary = bunny_title
    title_dir = store / "titles" / "bunny"
    check_as_player(title_dir, bunny)
    assert [r["id"] for r in summary["renditions"]] == ["h264_720p", "h264_360p", "audio"]
    master = m3u8.load(str(title_dir / "master.m3u8"))
    assert len(master.media) == 1 and master.media[0].type == "AUDIO"
    assert all(p.stream_info.codecs.endswith(",mp4a.40.2") for p in master.playlists)
    audio = m3u8.load(str(media_playlist(title_dir / "audio")))
    data = (title_dir / "audio" / audio.segment_map[0].uri).read_bytes() + b"".join(
        (title_dir / "audio" / s.uri).read_bytes() for s in audio.segments
    )
    with open_bytes(data) as c:
        stream = c.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.codec_context.channels == 2
        assert sum(f.samples for f in c.decode(audio=0)) / 48000 == pytest.approx(5.3, abs=0.1)


def test_bikes_title_plays_without_audio(bikes_title: tuple[Path, dict], bikes: Path) -> None:
    store, summary = bikes_title
    title_dir = store / "titles" / "bikes"
    check_as_player(title_dir, bikes)
    assert [r["id"] for r in summary["renditions"]] == ["h264_272p", "h264_240p"]
    assert not (title_dir / "audio").exists()
    assert "EXT-X-MEDIA" not in (title_dir / "master.m3u8").read_text()
    assert max(r["height"] for r in summary["renditions"]) <= 272  # never upscale


def test_ls_lists_titles_with_digests(bunny_title: tuple[Path, dict]) -> None:
    store, summary = bunny_title
    listed = json.loads(
        run_cli(["origin", "ls", "--store", str(store), "--json"], check=True).stdout
    )
    assert [t["id"] for t in listed] == ["bunny"]
    raw = (store / "titles" / "bunny" / "files.json").read_bytes()
    assert listed[0]["digest"] == summary["digest"] == titlefiles.digest_bytes(raw)
    plain = run_cli(["origin", "ls", "--store", str(store)], check=True).stdout
    assert plain.splitlines()[0].startswith("id\t") and "bunny" in plain


def test_reingest_refuses_then_replace_swaps(bikes: Path, tmp_path: Path) -> None:
    first = ingest(bikes, tmp_path, "rep", "--heights", "240")
    again = run_cli(["origin", "ingest", str(bikes), "--id", "rep", "--title", "x",
                     "--store", str(tmp_path)])  # fmt: skip
    assert again.returncode != 0 and "--replace" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    second = ingest(bikes, tmp_path, "rep", "--heights", "272", "--replace")
    assert [r["id"] for r in first["renditions"]] == ["h264_240p"]
    assert [r["id"] for r in second["renditions"]] == ["h264_272p"]
    title_dir = tmp_path / "titles" / "rep"
    assert not (title_dir / "h264_240p").exists()
    model, digest = titlefiles.read(title_dir)
    assert digest == second["digest"] and titlefiles.verify(title_dir, model) == []
    # No temp folder left behind; the 240p segments kept for players on the first version.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".replaced", "titles"]
    (kept,) = (tmp_path / ".replaced").iterdir()
    assert {p.name for p in kept.iterdir()} == {"h264_240p"}


def test_published_again_never_reuses_a_cacheable_name(bikes: Path, tmp_path: Path) -> None:
    """Init and media segments are served as immutable, so browsers and proxies keep them for
    ever under their names: a title published again with other bytes must name every changed
    file anew, and bytes that did not change keep their names (and the caches' copies)."""
    title_dir = tmp_path / "titles" / "rep"

    def publish(seconds: str, *extra: str) -> dict[str, str]:
        run_cli(["origin", "ingest", str(bikes), "--id", "rep", "--title", "x", "--store",
                 str(tmp_path), "--heights", "240", "--segment-seconds", seconds, *extra],
                check=True)  # fmt: skip
        model, _ = titlefiles.read(title_dir)
        return {f.path: f.sha256 for f in model.files}

    def cacheable(files: dict[str, str]) -> set[str]:
        return {path for path in files if cache_control(path) == IMMUTABLE}

    first = publish("2")
    # Every init and media segment is cacheable for ever; playlists and the rest are not.
    media = {
        p for p in first if p.endswith(".m4s") or p.rpartition("/")[2].startswith(("init", "index"))
    }
    assert media and cacheable(first) == media
    again = publish("2", "--replace")
    for path in cacheable(first) & cacheable(again):
        assert first[path] == again[path]  # a name kept is the same bytes
    second = publish("1", "--replace")
    assert cacheable(second) and not cacheable(again) & cacheable(second)
    for playlist in ("master.m3u8", "manifest.mpd"):
        assert again[playlist] != second[playlist]  # they name the new files
