"""Origin encode benchmark (`make bench`): packaging overhead of `edgeflix origin ingest` over
one plain ffmpeg command with the same encoder settings and as many outputs, and the per-title
ladder (`--ladder auto`) against the fixed one: total bitrate and mean VMAF per title.
Goals: overhead <= 10%; auto >= 20% fewer bits at equal or better VMAF.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, get_args

from quiet import wait_for_quiet

from edgeflix.samples import sample_clip
from edgeflix.ui import print_table
from origin import config as origin_config
from origin.config import Preset
from origin.ffmpeg import AUDIO_ID, EncodeSettings, audio_codec_args, filter_graph, video_codec_args
from origin.ladder import default_ladder
from origin.pertitle import score
from origin.probe import Source, probe
from origin.runner import find_ffmpeg, run_ffmpeg

SEGMENT_SECONDS = 4.0
REPEATS = 5


def plain_ffmpeg(ffmpeg: str, source: Source, out: Path, preset: str) -> list[str]:
    """The reference: the same decode, filter graph and encoders, one plain MP4 per output."""
    rungs = default_ladder(source.width, source.height, ["h264"], fps=source.fps)
    settings = EncodeSettings(
        frame_rate=source.frame_rate,
        segment_seconds=SEGMENT_SECONDS,
        preset=preset,
        hdr_transfer=source.hdr_transfer,
        video_stream=source.video_stream,
        audio_stream=source.audio.index if source.audio else None,
    )
    args = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(source.path)]
    args += ["-filter_complex", filter_graph(rungs, settings)]
    for i, rung in enumerate(rungs):
        args += [
            "-map",
            f"[v{i}]",
            "-an",
            *video_codec_args(rung, settings),
            str(out / f"{rung.id}.mp4"),
        ]
    if settings.audio_stream is not None:
        args += ["-map", f"0:{settings.audio_stream}", "-vn"]
        args += [*audio_codec_args(settings, source.duration), str(out / f"{AUDIO_ID}.mp4")]
    return args


def ingest(src: Path, store: Path, title_id: str, preset: str, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "EDGEFLIX_ORIGIN__ENCODE__PRESET": preset}
    cmd = [sys.executable, "-m", "edgeflix.cli", "origin", "ingest", str(src), "--id", title_id,
           "--title", title_id, "--store", str(store), "--segment-seconds", str(SEGMENT_SECONDS),
           "--json", "--replace", *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and the CPU seconds of the child processes (and theirs) that `fn` ran."""
    cpu, start = _children_cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - start, _children_cpu() - cpu


def overhead(ffmpeg: str, clips: dict[str, Path], work: Path, preset: str) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, src in clips.items():
        source = probe(src)
        plain_dir = work / f"plain-{name}-{preset}"
        plain_dir.mkdir()
        ours: list[float] = []
        theirs: list[float] = []
        ours_cpu: list[float] = []
        theirs_cpu: list[float] = []
        plain = partial(run_ffmpeg, plain_ffmpeg(ffmpeg, source, plain_dir, preset), "bench")
        ours_run = partial(ingest, src, work / "store", f"{name}-default", preset)
        wait_for_quiet()
        for _ in range(REPEATS):  # interleaved, so drift in machine load hits both alike
            for fn, walls, cpus in ((plain, theirs, theirs_cpu), (ours_run, ours, ours_cpu)):
                wall, cpu = timed(fn)
                walls.append(wall)
                cpus.append(cpu)
        a, b = statistics.median(ours), statistics.median(theirs)
        # The overhead: median of the per-round (paired) ratios and differences, robust when
        # the shared machine's load moves between rounds; the extra seconds show that it is
        # a fixed cost per ingest (start-up), not a share of the encode.
        ratio = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
        extra = statistics.median(o - t for o, t in zip(ours, theirs, strict=True))
        # CPU seconds (user + system, the ingest's Python and its ffmpeg) barely move with
        # the machine's load, so they show what packaging costs when wall times are noisy.
        cpu_ratio = statistics.median(ours_cpu) / statistics.median(theirs_cpu)
        rows.append((name, preset, f"{source.duration:.1f}", f"{b:.2f}", f"{a:.2f}",
                     f"{extra:+.2f}", f"{(ratio - 1) * 100:+.1f}%",
                     f"{(cpu_ratio - 1) * 100:+.1f}%"))  # fmt: skip
    return rows


def title_vmaf(
    ffmpeg: str, source: Source, title: dict[str, Any], store: Path, work: Path
) -> list[float]:
    """VMAF of every video rendition of a published title, each decoded from init + segments."""
    folder = store / "titles" / title["id"]
    files = []
    for rendition in title["renditions"]:
        if rendition["kind"] != "video":
            continue
        rdir = folder / rendition["id"]
        joined = work / f"{title['id']}-{rendition['id']}.mp4"
        # seg_<tag>_00000.m4s, numbered in order (see origin/segments.py name_by_content)
        segments = sorted(rdir.glob("seg_*.m4s"), key=lambda p: int(p.stem.rpartition("_")[2]))
        init = next(rdir.glob("init_*.mp4"))
        joined.write_bytes(b"".join(p.read_bytes() for p in [init, *segments]))
        files.append(joined)
    return score(ffmpeg, source, 0.0, source.duration, files, work)


def ladders(ffmpeg: str, clips: dict[str, Path], work: Path, preset: str) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    store = work / "store"
    for name, src in clips.items():
        source = probe(src)
        results = {}
        for ladder in ("default", "auto"):
            before = _children_cpu()
            title = ingest(src, store, f"{name}-{ladder}", preset, "--ladder", ladder)
            cpu = _children_cpu() - before  # the ingest and its ffmpegs: trials cost this
            videos = [r for r in title["renditions"] if r["kind"] == "video"]
            scores = title_vmaf(ffmpeg, source, title, store, work)
            kbps = sum(r["average_bandwidth"] for r in videos) / 1000
            vmaf = statistics.mean(scores)
            results[ladder] = (kbps, vmaf)
            per_rung = " ".join(
                f"{r['height']}p@{r['average_bandwidth'] / 1000:.0f}k:{v:.1f}"
                for r, v in zip(videos, scores, strict=True)
            )
            # The lowest rung is what a player on a weak network gets: average and peak.
            low = min(videos, key=lambda r: r["average_bandwidth"])
            floor = f"{low['average_bandwidth'] / 1000:.0f}/{low['bandwidth'] / 1000:.0f}"
            rows.append((name, f"{ladder} ({preset})", per_rung, f"{kbps:.0f}", f"{vmaf:.2f}",
                         "", "", floor, f"{cpu:.1f}"))  # fmt: skip
        (dk, dv), (ak, av) = results["default"], results["auto"]
        rows[-1] = (*rows[-1][:5], f"{(1 - ak / dk) * 100:+.1f}%", f"{av - dv:+.2f}", *rows[-1][7:])
    return rows


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=("all", "overhead", "ladders"),
        default="all",
        help="overhead: ingest vs plain ffmpeg; ladders: --ladder auto vs default",
    )
    parser.add_argument(
        "--preset",
        choices=get_args(Preset),
        default=None,
        help="x264 preset of both sides (default: the origin's, $EDGEFLIX_ORIGIN__ENCODE__PRESET)",
    )
    args = parser.parse_args()
    part = args.part
    preset = args.preset or origin_config.load(None).encode.preset
    # The overhead is a fixed cost per ingest, so it also shows at the fastest common preset,
    # where the encode it is compared with is shortest.
    presets = [preset] + ([] if preset == "veryfast" else ["veryfast"])
    ffmpeg = find_ffmpeg()
    with tempfile.TemporaryDirectory(prefix="edgeflix-bench-") as tmp:
        work = Path(tmp)
        bunny, bikes = sample_clip("bigbuckbunny.mp4"), sample_clip("bikes.mp4")
        # A longer title too: on a 5 s clip, Python start-up alone is a visible share.
        looped = work / "bunny-x4.mp4"
        subprocess.run([ffmpeg, "-loglevel", "error", "-stream_loop", "3", "-i", str(bunny),
                        "-c", "copy", str(looped)], check=True)  # fmt: skip
        clips = {"bunny": bunny, "bikes": bikes, "bunny-x4": looped}
        if part in ("all", "overhead"):
            print_table(
                [
                    "clip",
                    "preset",
                    "seconds",
                    "plain ffmpeg s",
                    "origin ingest s",
                    "extra s",
                    "overhead",
                    "CPU overhead",
                ],
                [row for p in presets for row in overhead(ffmpeg, clips, work, p)],
                title=f"Packaging overhead (default ladder, median of {REPEATS} paired rounds; "
                "goal <= +10%)",
            )
        if part not in ("all", "ladders"):
            return
        # Both ladders measured alike: every rendition decoded from its segments, upscaled
        # (bicubic) to the source size, VMAF against the whole source, every frame.
        print_table(
            [
                "clip",
                "ladder",
                "rungs (size@kbit/s:VMAF)",
                "video kbit/s",
                "mean VMAF",
                "bits saved",
                "VMAF diff",
                "lowest rung kbit/s avg/peak",
                "ingest CPU s",
            ],
            ladders(ffmpeg, {"bunny": bunny, "bikes": bikes}, work, preset),
            title="Per-title ladder (goal: auto >= 20% fewer bits at equal or better VMAF)",
        )


if __name__ == "__main__":
    main()
