"""One ingest, start to publish: probe → ladder → one ffmpeg for the whole ladder and the
poster → measure the segments → HLS + DASH → files.json last → verify → atomic publish
(store.py).
The CLI (`origin/cli.py`) only parses options and shows progress through `Reporter`.
ffmpeg starts as soon as its command line is known: what only the packaging needs (PyAV's
segment reader, the manifest writers) is imported while it encodes, not before.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from edgeflix import titlefiles
from edgeflix.log import event
from edgeflix.titlefiles import FileEntry, RenditionInfo, TitleFiles, check_title_id
from origin.config import EncodeConfig
from origin.errors import EncodeError, SourceError, StoreError
from origin.ffmpeg import (
    AAC_PRIMING_SAMPLES,
    AUDIO_ID,
    SCRATCH_PLAYLIST,
    EncodeSettings,
    Poster,
    encode_args,
    poster_frame,
)
from origin.ladder import CODECS, Rung, TooSmall, default_ladder
from origin.probe import Source, probe
from origin.replaced import KEEP_S
from origin.runner import FfmpegLookup, start_ffmpeg
from origin.store import Staging, store_error

if TYPE_CHECKING:  # imported by package() once ffmpeg runs
    from origin.segments import Media

log = logging.getLogger("origin.ingest")
POSTER = "poster.jpg"
POSTER_WIDTH = 1280
# A segment may differ from the target by this share (the last one may be shorter).
SEGMENT_TOLERANCE = 0.10


class Reporter(Protocol):
    """Where progress goes: a rich bar per rendition on a terminal, nothing in a pipe."""

    def stage(self, name: str, total: float, labels: Sequence[str]) -> None: ...
    def update(self, done: float) -> None: ...


class Silent:
    def stage(self, name: str, total: float, labels: Sequence[str]) -> None:
        pass

    def update(self, done: float) -> None:
        pass


@dataclass(frozen=True)
class IngestRequest:
    source: Path
    title_id: str
    title: str
    store: Path
    ladder: Literal["default", "auto"] = "default"
    segment_seconds: float = 4.0
    codecs: tuple[str, ...] = ("h264",)
    heights: tuple[int, ...] | None = None
    replace: bool = False
    # How long the replaced version's segments stay servable ([publish] replaced_keep_s).
    replaced_keep_s: float = KEEP_S


def check_request(req: IngestRequest) -> None:
    check_title_id(req.title_id)
    if len(set(req.codecs)) != len(req.codecs):
        raise SourceError(f"--codecs names a codec twice: {','.join(req.codecs)}")
    if not req.title.strip() or not req.title.isprintable():
        raise SourceError("--title must be one line of printable text")
    if not req.codecs:
        raise SourceError(f"--codecs is empty; choose from {', '.join(CODECS)}")
    unknown = [c for c in req.codecs if c not in CODECS]
    if unknown:
        raise SourceError(f"unknown codec {', '.join(unknown)}; choose from {', '.join(CODECS)}")
    if not 0.5 <= req.segment_seconds <= 30:
        raise SourceError("--segment-seconds must be between 0.5 and 30")
    if re.search(r"%\d*d", str(req.store.absolute())):
        # ffmpeg's hls muxer numbers segments by replacing the first such pattern in the
        # whole path (no escape exists), so segments would land in another folder.
        raise StoreError(f"store {req.store}: ffmpeg cannot write under a path with '%d' in it")


def check_segments(settings: EncodeSettings, segment_seconds: float) -> None:
    """A segment is one GOP of whole frames: refuse, before encoding, a target that the
    nearest whole GOP misses by more than the tolerance (a slideshow's few frames a second)."""
    if abs(settings.hls_time - segment_seconds) > segment_seconds * SEGMENT_TOLERANCE:
        raise SourceError(
            f"a {float(settings.frame_rate):.3f} fps source cannot be cut into "
            f"{segment_seconds:g} s segments of whole frames; use --segment-seconds "
            f"{settings.hls_time:.3g}"
        )


def ingest(
    req: IngestRequest,
    cfg: EncodeConfig,
    reporter: Reporter | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    publishing: Callable[[], AbstractContextManager[object]] | None = None,
) -> tuple[TitleFiles, str]:
    """Package `req.source` and publish it; return its files.json model and digest.

    `publishing()`, if given, is entered around the step that makes the title live (the
    CLI defers a cancelling signal there, and ignores one once it is over)."""
    reporter = reporter or Silent()
    check_request(req)
    lookup = FfmpegLookup(cfg.ffmpeg)  # checks the binary while the probe runs
    source = probe(req.source)
    ffmpeg = lookup.result()
    try:
        rungs = default_ladder(source.width, source.height, req.codecs, req.heights, fps=source.fps)
    except TooSmall as exc:
        raise SourceError(f"{req.source}: {exc}") from None
    if not rungs:
        raise SourceError(f"no ladder rung fits a {source.height}p source with these --heights")
    settings = EncodeSettings(
        frame_rate=source.frame_rate,
        segment_seconds=req.segment_seconds,
        preset=cfg.preset,
        audio_kbps=cfg.audio_kbps,
        threads=cfg.threads,
        hdr_transfer=source.hdr_transfer,
        video_stream=source.video_stream,
        audio_stream=source.audio.index if source.audio else None,
    )
    check_segments(settings, req.segment_seconds)
    with Staging(req.store, req.title_id, req.replace, keep_s=req.replaced_keep_s) as staging:
        for name in staging.cleaned:
            event(log, "store.cleaned", folder=name)
        if req.ladder == "auto":
            from origin import pertitle  # only per-title ingests pay for it

            reporter.stage("choosing ladder (VMAF trials)", 1.0, ["trials"])
            rungs = pertitle.choose(
                ffmpeg, source, rungs, settings, staging.root / "trials",
                cfg.trial_seconds, reporter.update,
            )  # fmt: skip
        event(log, "ladder", id=req.title_id, rungs=",".join(f"{r.id}@{r.kbps}k" for r in rungs),
              tone_map=source.hdr_transfer or "no")  # fmt: skip
        try:
            model = package(ffmpeg, source, rungs, settings, staging.title_dir, req, reporter, now)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
                raise store_error(exc, req.store) from None
            raise
        raw = titlefiles.render(model)
        with publishing() if publishing is not None else nullcontext():
            staging.publish()
        if staging.keep_error is not None:
            event(log, "replaced.not_kept", logging.WARNING, id=req.title_id,
                  error=staging.keep_error)  # fmt: skip
    digest = titlefiles.digest_bytes(raw)
    event(log, "title.published", id=req.title_id, bytes=model.total_bytes, digest=digest,
          kept=staging.kept)  # fmt: skip
    return model, digest


def package(
    ffmpeg: str,
    source: Source,
    rungs: Sequence[Rung],
    settings: EncodeSettings,
    out: Path,
    req: IngestRequest,
    reporter: Reporter,
    now: Callable[[], datetime],
) -> TitleFiles:
    """Encode and package into `out` (a folder nobody reads yet); files.json last, verified."""
    for rung in rungs:
        (out / rung.id).mkdir()
    if source.has_audio:
        (out / AUDIO_ID).mkdir()
    frame = poster_frame(source.duration, settings.frame_rate, source.frames)
    poster = Poster(frame, POSTER_WIDTH, out / POSTER)
    args = encode_args(ffmpeg, source.path, rungs, settings, out, poster, source.duration)
    with start_ffmpeg(args, f"encoding {source.path.name}") as encode:
        # ffmpeg is running: load the packaging code now (its -progress lines wait in the pipe).
        from origin import dash, hls
        from origin.segments import brand_cmaf, measure, name_by_content

        reporter.stage("encoding", source.duration, [r.id for r in rungs])
        encode.wait(reporter.update)
    check_space(out, f"encoding {source.path.name}")
    if not poster.path.is_file() or poster.path.stat().st_size == 0:
        raise EncodeError(f"ffmpeg wrote no poster (frame {frame} of {source.path.name})")
    for folder in [*(r.id for r in rungs), *([AUDIO_ID] if source.has_audio else [])]:
        brand_cmaf(out / folder)  # before measuring: sizes and digests of the final bytes
    videos = [measure(out / r.id, settings.frame_rate) for r in rungs]
    audio = measure(out / AUDIO_ID) if source.has_audio else None
    decoded = sum(s.frames for s in videos[0].segments)
    if decoded < source.frames - 1:  # ffmpeg exits 0 at the end of a file cut short
        raise SourceError(
            f"{source.path}: only {decoded} of its {source.frames} frames could be read "
            "(truncated or damaged file?)"
        )
    check_alignment(videos, req.segment_seconds, source.frames)
    videos, audio = align_starts(out, videos, audio)
    videos = [name_by_content(out / v.id, v) for v in videos]
    audio = name_by_content(out / AUDIO_ID, audio) if audio else None
    for media in [*videos, *([audio] if audio else [])]:
        (out / media.id / SCRATCH_PLAYLIST).unlink(missing_ok=True)
        (out / media.id / hls.playlist_name(media)).write_text(hls.media_playlist(media))
    duration = max(v.seconds for v in videos)
    language = source.audio.language if source.audio else None
    (out / hls.MASTER_PLAYLIST).write_text(hls.master_playlist(videos, audio, language))
    mpd = dash.mpd(videos, audio, duration, req.segment_seconds, language)
    (out / dash.MPD_NAME).write_text(mpd)
    files = titlefiles.scan(out)
    model = TitleFiles(
        id=req.title_id,
        title=req.title,
        duration=round(duration, 3),
        segment_seconds=req.segment_seconds,
        created=now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        renditions=tuple(_renditions(videos, rungs, audio)),
        files=tuple(files),
        total_bytes=sum(f.size for f in files),
    )
    write_files_json(out, model, files)
    return model


def align_starts(
    out: Path, videos: Sequence[Media], audio: Media | None
) -> tuple[list[Media], Media | None]:
    """Start every rendition's content where the latest starts. B-frames put a video's
    first picture a frame or two after 0 (its earlier samples decode first, and offsets
    never go negative: origin/ffmpeg.py), by as much as its encoder reorders; the audio
    starts at 0, and its sound proper 1024 samples of encoder priming later (21 ms). Each
    player places samples by their own times alone, so the sound moves
    with the picture, not the picture to the sound (no edit list, which MSE ignores, and
    no negative offsets, which FFmpeg's demuxer shows late)."""
    from origin.segments import shift_timeline

    def content_start(media: Media) -> Fraction:
        """When the rendition's content begins: its first sample, or for the sound the
        first sample after the encoder's priming (played as silence by every player)."""
        start = Fraction(media.segments[0].start, media.timescale)
        if media.kind == "audio" and media.codec == "aac" and media.sample_rate:
            start += Fraction(AAC_PRIMING_SAMPLES, media.sample_rate)
        return start

    medias = [*videos, *([audio] if audio else [])]
    latest = max(content_start(m) for m in medias)
    moved = []
    for media in medias:
        ticks = round((latest - content_start(media)) * media.timescale)
        moved.append(shift_timeline(out / media.id, media, ticks) if ticks > 0 else media)
    return moved[: len(videos)], (moved[-1] if audio else None)


def check_space(folder: Path, what: str) -> None:
    """ffmpeg's hls muxer logs nothing and exits 0 when a segment write hits ENOSPC (the
    segment is just cut short), so ask the filesystem whether it ran out while we wrote."""
    if os.statvfs(folder).f_bavail == 0:
        raise StoreError(f"disk full while {what}: no space left on device")


def check_alignment(videos: Sequence[Media], segment_seconds: float, source_frames: int) -> None:
    """Refuse to publish a ladder a player could not switch in: every segment opens on a
    keyframe, boundaries match across renditions, lengths are on target, no frame is lost."""
    first = videos[0]
    # Relative to each rendition's first frame: encoders differ in B-frame delay (an offset
    # the manifests carry, e.g. DASH presentationTimeOffset), not in where segments cut.
    bounds = [(s.start - first.segments[0].start) / first.timescale for s in first.segments]
    for video in videos:
        for seg in video.segments:
            if not seg.starts_with_keyframe:
                raise EncodeError(f"{video.id}/{seg.name} does not start on a keyframe")
        mine = [(s.start - video.segments[0].start) / video.timescale for s in video.segments]
        if len(mine) != len(bounds) or any(abs(a - b) > 1e-3 for a, b in zip(mine, bounds)):  # noqa: B905
            raise EncodeError(f"{video.id}: segment boundaries differ from {first.id}")
        for seg in video.segments[:-1]:
            seconds = seg.duration / video.timescale
            if abs(seconds - segment_seconds) > segment_seconds * SEGMENT_TOLERANCE:
                raise EncodeError(
                    f"{video.id}/{seg.name} lasts {seconds:.3f}s, not ~{segment_seconds}s"
                )
        frames = sum(s.frames for s in video.segments)
        if abs(frames - source_frames) > 1:
            raise EncodeError(f"{video.id}: {frames} frames, the source has {source_frames}")


def _renditions(
    videos: Sequence[Media], rungs: Sequence[Rung], audio: Media | None
) -> list[RenditionInfo]:
    vmaf = {r.id: r.vmaf for r in rungs}
    infos = [
        RenditionInfo(
            id=v.id,
            kind="video",
            codec=v.codec,
            codecs=v.codecs,
            bandwidth=v.peak_bps(),
            average_bandwidth=v.average_bps(),
            width=v.width,
            height=v.height,
            frame_rate=float(v.frame_rate) if v.frame_rate else None,
            vmaf=vmaf.get(v.id),
            segments=len(v.segments),
        )
        for v in videos
    ]
    if audio is not None:
        infos.append(
            RenditionInfo(
                id=audio.id,
                kind="audio",
                codec=audio.codec,
                codecs=audio.codecs,
                bandwidth=audio.peak_bps(),
                average_bandwidth=audio.average_bps(),
                segments=len(audio.segments),
            )
        )
    return infos


def write_files_json(out: Path, model: TitleFiles, files: Sequence[FileEntry]) -> None:
    """Write files.json last and read it back as an appliance will: it must parse to the model
    written and list exactly the files on disk, with their sizes. Their SHA-256 come from
    `scan` over these same finished files a moment ago; hashing them again would only repeat
    it (appliances verify every hash when they fill)."""
    path = out / titlefiles.FILES_JSON
    path.write_bytes(titlefiles.render(model))
    reread, _ = titlefiles.read(out)
    problems = []
    if reread != model:
        problems.append("files.json does not read back as written")
    if titlefiles.sizes(out) != {f.path: f.size for f in files}:
        problems.append("files on disk differ from files.json")
    if problems:
        raise EncodeError(f"packaged title failed verification: {problems[0]}")
