"""ffmpeg command lines, pure: the ladder encode (one process, one decode, a split filter and
one CMAF output per rendition, plus the poster JPEG as one more output), per-title trial
encodes and VMAF measurement, and the parser of `-progress` output. `origin/runner.py` runs
what this builds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final

from origin.ladder import Rung

AUDIO_ID = "audio"
# FFmpeg's AAC encoder starts every stream with this many samples of encoder delay
# (priming), which the edit list we do not write would have skipped: the sound proper
# begins that much after the audio's first sample.
AAC_PRIMING_SAMPLES = 1024
INIT_NAME = "init.mp4"
SEGMENT_PATTERN = "seg_%05d.m4s"
SCRATCH_PLAYLIST = ".ffmpeg.m3u8"  # ffmpeg's own playlist; we write ours from the real segments
VMAF_MODEL = "version=vmaf_v0.6.1"
# Per-title (CRF) rungs: peak bitrate cap as a multiple of the predicted average.
CRF_CAP = 2.0
# Errors only, each line tagged with its level: a failure is told by its first error (the
# cause), not by the last (what the cause made fail in turn, e.g. the poster output that
# "received no packets" once an encoder refused to open).
LOGLEVEL = "level+error"


@dataclass(frozen=True)
class Poster:
    """The poster output of the ladder encode: one frame (by index, counted after the fps
    filter) as a JPEG at most `width` wide. A branch of the same decode: no second process,
    no second seek."""

    frame: int
    width: int
    path: Path


# x264's and x265's own default (and ffmpeg's). A title is encoded once and served for years,
# so bits weigh more than encode seconds. On the sample clips `medium` takes 2.4x the CPU of
# `veryfast` and scores 1.6-2.2 VMAF higher at the fixed ladder's bitrates; the per-title
# ladder saves 22-24% of the bits at equal VMAF with it, 14-24% with `veryfast`
# (bench/encode.py). `[encode] preset` picks another.
DEFAULT_PRESET: Final = "medium"


@dataclass(frozen=True)
class EncodeSettings:
    frame_rate: Fraction
    segment_seconds: float
    preset: str = DEFAULT_PRESET
    audio_kbps: int = 128
    threads: int = 0  # 0: let each encoder decide
    hdr_transfer: str | None = None  # an HDR source's transfer (probe.Source): tone-mapped
    # The source's streams the title is made of, by index (probe.Source's choice): ffmpeg's
    # own picks would be the first video that is no cover art and the first audio.
    video_stream: int = 0
    audio_stream: int | None = None  # None: no sound

    @property
    def gop(self) -> int:
        """Frames per segment: every segment is exactly one closed GOP."""
        return max(1, round(self.segment_seconds * self.frame_rate))

    @property
    def hls_time(self) -> float:
        return float(self.gop / self.frame_rate)


def rate_args(rung: Rung) -> list[str]:
    """Fixed rungs: capped VBR at the table bitrate. Per-title rungs: capped CRF, the quality
    their trials picked; the cap (CRF_CAP x the predicted average) only bites on scenes far
    harder than the trial excerpt. Trial encodes (kbps 0) run uncapped."""
    kbps = rung.kbps
    if rung.crf is not None:
        args, cap = ["-crf", f"{rung.crf:g}"], round(kbps * CRF_CAP)
    else:
        args, cap = ["-b:v", f"{kbps}k"], kbps * 3 // 2
    if cap and rung.codec != "av1":  # SVT-AV1 takes no VBV cap in these modes
        bufsize = cap * 2 if rung.crf is not None else kbps * 2
        args += ["-maxrate", f"{cap}k", "-bufsize", f"{bufsize}k"]
    return args


def video_codec_args(rung: Rung, settings: EncodeSettings) -> list[str]:
    """Encoder options for one rung: its rate control, fixed closed GOP, no scene-cut keyframes."""
    gop = settings.gop
    common = rate_args(rung)
    common += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    common += ["-force_key_frames", f"expr:eq(mod(n,{gop}),0)", "-pix_fmt", "yuv420p"]
    if settings.threads:
        common += ["-threads", str(settings.threads)]
    if rung.codec == "h264":
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0"
        return ["-c:v", "libx264", "-preset", settings.preset, "-profile:v", "high",
                *common, "-x264-params", params]  # fmt: skip
    if rung.codec == "hevc":
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:log-level=error"
        return ["-c:v", "libx265", "-preset", settings.preset, "-tag:v", "hvc1",
                *common, "-x265-params", params]  # fmt: skip
    if rung.codec == "av1":
        # SVT-AV1 presets are numbers; map the x264 names onto its speed scale.
        preset = {"ultrafast": "12", "superfast": "11", "veryfast": "10", "faster": "9",
                  "fast": "8", "medium": "7", "slow": "5", "slower": "4"}  # fmt: skip
        params = f"keyint={gop}:scd=0:irefresh-type=2"
        return ["-c:v", "libsvtav1", "-preset", preset.get(settings.preset, "8"),
                *common, "-svtav1-params", params]  # fmt: skip
    raise ValueError(f"unknown codec {rung.codec!r}")


def cmaf_output_args(folder: Path, settings: EncodeSettings) -> list[str]:
    """The hls muxer writing fMP4: init.mp4 plus one file per segment, cut at every keyframe
    once `hls_time` has passed, i.e. exactly at our forced GOP boundaries."""
    return [
        "-f", "hls",
        "-hls_time", f"{settings.hls_time:.6f}",
        "-hls_playlist_type", "vod",
        "-hls_segment_type", "fmp4",
        "-hls_fmp4_init_filename", INIT_NAME,
        "-hls_segment_filename", str(folder / SEGMENT_PATTERN),
        "-hls_flags", "independent_segments",
        # No edit lists, no negative composition offsets: every reader then places a sample
        # at its decode time plus its offset, and nowhere else. MSE players (hls.js) ignore
        # edit lists; FFmpeg's mov demuxer (ffplay, mpv, VLC) shows every picture late by
        # the largest negative offset it has read (`dts_shift`), and with an edit list on
        # top by that too. B-frames thus start the picture a frame or two after 0; ingest
        # moves the other renditions' timelines to start with it (`align_starts`). Hence no
        # movflags=+cmaf either (it forces negative offsets): ingest adds the CMAF brand to
        # init.mp4 itself (origin/segments.py `brand_cmaf`).
        "-hls_segment_options", "use_editlist=0",
        str(folder / SCRATCH_PLAYLIST),
    ]  # fmt: skip


# Frames flagged interlaced (25i/30i broadcast, camcorders) become progressive, one frame per
# frame: woven fields, once scaled and shown progressively, comb every moving edge. Progressive
# frames pass untouched (a reference, no copy).
DEINTERLACE = "bwdif=mode=send_frame:deint=interlaced"


def tone_map(transfer: str) -> str:
    """HDR (PQ or HLG, BT.2020) to SDR (BT.709, 8-bit), which every player shows as meant: an
    8-bit stream of HDR code values shows washed out, or banded where a display honours its
    HDR tag. Linear light with SDR white at 100 nits, BT.709 primaries, then Möbius tone
    mapping: colours within SDR's range stay as they are, highlights above it roll off.
    The primaries and matrix are set first: HDR files often leave them unsaid, and BT.2100
    HDR is BT.2020."""
    return (
        f"setparams=color_primaries=bt2020:color_trc={transfer}:colorspace=bt2020nc,"
        "zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,"
        "tonemap=tonemap=mobius:desat=0,zscale=t=bt709:m=bt709:r=tv,format=yuv420p"
    )


def picture(frame_rate: Fraction, hdr_transfer: str | None = None) -> str:
    """The source's pictures as every rendition starts from: deinterlaced where flagged, at
    a constant frame rate, SDR."""
    chain = f"{DEINTERLACE},fps={frame_rate}"
    return f"{chain},{tone_map(hdr_transfer)}" if hdr_transfer else chain


def filter_graph(
    rungs: Sequence[Rung], settings: EncodeSettings, poster: Poster | None = None
) -> str:
    """One decode of the source's video stream, made the `picture` every rendition starts
    from, split once per rendition and scaled; with a poster, one more branch keeps only its
    frame (then ends) and scales that one."""
    branches = len(rungs) + (1 if poster else 0)
    labels = "".join(f"[s{i}]" for i in range(branches))
    start = picture(settings.frame_rate, settings.hdr_transfer)
    parts = [f"[0:{settings.video_stream}]{start},split={branches}{labels}"]
    for i, rung in enumerate(rungs):
        parts.append(f"[s{i}]scale={rung.width}:{rung.height}:flags=bicubic,setsar=1[v{i}]")
    if poster:
        parts.append(
            f"[s{len(rungs)}]trim=start_frame={poster.frame}:end_frame={poster.frame + 1},"
            f"scale='min({poster.width},iw)':-2[poster]"
        )
    return ";".join(parts)


def base_args(ffmpeg: str, source: Path) -> list[str]:
    return [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", LOGLEVEL, "-y",
            "-progress", "pipe:1", "-nostats", "-i", str(source)]  # fmt: skip


def encode_args(
    ffmpeg: str,
    source: Path,
    rungs: Sequence[Rung],
    settings: EncodeSettings,
    out_dir: Path,
    poster: Poster | None = None,
    seconds: float | None = None,
) -> list[str]:
    """The whole ladder in one ffmpeg: every rendition into `out_dir/<rung id>/`, the
    source's chosen audio stream (if any) into `out_dir/audio/`, and the poster when asked.
    With `seconds` (the picture's length) the audio lasts exactly that (audio_codec_args)."""
    args = base_args(ffmpeg, source)
    args += ["-filter_complex", filter_graph(rungs, settings, poster)]
    for i, rung in enumerate(rungs):
        args += ["-map", f"[v{i}]", "-an", *video_codec_args(rung, settings)]
        args += cmaf_output_args(out_dir / rung.id, settings)
    if settings.audio_stream is not None:
        args += ["-map", f"0:{settings.audio_stream}", "-vn", *audio_codec_args(settings, seconds)]
        args += cmaf_output_args(out_dir / AUDIO_ID, settings)
    if poster:
        args += ["-map", "[poster]", "-an", "-frames:v", "1", "-q:v", "3",
                 "-f", "image2", "-update", "1", str(poster.path)]  # fmt: skip
    return args


# Audio from the title's zero on, in step with the video: each rendition is its own output,
# so audio whose first sample comes after the video's (a late start, a capture's gap) would
# otherwise start at 0 and play early — its muxer records the delay only as an empty edit in
# init.mp4, which MSE players may ignore. Real silence fills that gap (and any later one).
AUDIO_SYNC = "aresample=async=1:first_pts=0"


def audio_codec_args(settings: EncodeSettings, seconds: float | None = None) -> list[str]:
    """The sound's filters and encoder. With `seconds` (the picture's length) it lasts
    exactly that: silence after sound that ends early (players buffering both kinds stall
    where one runs out, before the title's end), and sound running on past the last frame
    cut (else the title is longer in HLS, whose players play to the longest playlist on a
    frozen frame, than in DASH's mediaPresentationDuration)."""
    filters = AUDIO_SYNC + (f",apad=whole_dur={seconds:.6f}" if seconds else "")
    args = ["-af", filters, "-c:a", "aac", "-b:a", f"{settings.audio_kbps}k",
            "-ac", "2", "-ar", "48000"]  # fmt: skip
    return [*args, "-t", f"{seconds:.6f}"] if seconds else args


def poster_time(duration: float) -> float:
    """A tenth into the title: past black openings, before anything important."""
    return max(0.0, min(duration * 0.1, 30.0))


def poster_frame(duration: float, frame_rate: Fraction, frames: int) -> int:
    """The index of the poster's frame (see `poster_time`), inside a title of `frames`."""
    return max(0, min(round(poster_time(duration) * frame_rate), frames - 1))


def trial_args(
    ffmpeg: str,
    source: Path,
    start: float,
    length: float,
    trials: Sequence[tuple[Rung, Path]],
    settings: EncodeSettings,
) -> list[str]:
    """Trial encodes of an excerpt: one decode, one plain MP4 per (rung at a bitrate)."""
    graph = filter_graph([r for r, _ in trials], settings)
    args = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", LOGLEVEL, "-y",
            "-progress", "pipe:1", "-nostats",
            "-ss", f"{start:.3f}", "-t", f"{length:.3f}", "-i", str(source),
            "-filter_complex", graph]  # fmt: skip
    for i, (rung, out) in enumerate(trials):
        args += ["-map", f"[v{i}]", "-an", *video_codec_args(rung, settings)]
        args += ["-f", "mp4", str(out)]
    return args


def vmaf_args(
    ffmpeg: str,
    reference: Path,
    ref_start: float,
    ref_length: float,
    distorted: Sequence[tuple[Path, Path]],
    width: int,
    height: int,
    frame_rate: Fraction,
    subsample: int = 1,
    threads: int = 2,
    hdr_transfer: str | None = None,
    *,
    video_stream: int,
) -> list[str]:
    """VMAF of each distorted file (upscaled to `width`x`height`) against the reference
    excerpt (its stream `video_stream`) made the `picture` the renditions start from, all
    in one process; each score goes to its JSON log file."""
    args = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", LOGLEVEL, "-y",
            "-progress", "pipe:1", "-nostats"]  # fmt: skip
    for path, _ in distorted:
        args += ["-i", str(path)]
    args += ["-ss", f"{ref_start:.3f}", "-t", f"{ref_length:.3f}", "-i", str(reference)]
    n = len(distorted)
    labels = "".join(f"[r{i}]" for i in range(n))
    graph = [f"[{n}:{video_stream}]{picture(frame_rate, hdr_transfer)},scale={width}:{height}:"
             f"flags=bicubic,setpts=PTS-STARTPTS,split={n}{labels}"]  # fmt: skip
    for i, (_, log) in enumerate(distorted):
        graph.append(
            f"[{i}:v:0]scale={width}:{height}:flags=bicubic,setpts=PTS-STARTPTS[d{i}];"
            f"[d{i}][r{i}]libvmaf=model={VMAF_MODEL}:n_threads={threads}:"
            f"n_subsample={subsample}:log_fmt=json:log_path={_escape(str(log))}[o{i}]"
        )
    args += ["-filter_complex", ";".join(graph)]
    for i in range(n):
        args += ["-map", f"[o{i}]", "-f", "null", "-"]
    return args


def _escape(value: str) -> str:
    """Escape a filter option value (':' and '\\' are special inside a filter graph)."""
    return value.replace("\\", "\\\\\\\\").replace(":", "\\\\:").replace("'", "\\\\'")


def parse_progress(lines: Iterable[str]) -> float | None:
    """The last `out_time_us` (seconds) in a chunk of `-progress` key=value lines."""
    seconds = None
    for line in lines:
        key, _, value = line.strip().partition("=")
        if key == "out_time_us" and value.lstrip("-").isdigit():
            seconds = max(0.0, int(value) / 1_000_000)
    return seconds
