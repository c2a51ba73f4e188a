"""HLS playlists, pure: a media playlist per rendition and the master playlist, written from
the measured segments (`origin/segments.py`) so every duration and bandwidth is the real one.
Audio is one EXT-X-MEDIA group that every video variant references.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgeflix.http.content import media_playlist_name
from origin.segments import Media

MASTER_PLAYLIST = "master.m3u8"
AUDIO_GROUP = "audio"
VERSION = 7  # EXT-X-MAP with fMP4 media segments needs version 7


def playlist_name(media: Media) -> str:
    """Where the rendition's playlist goes, in its folder: index_<tag>.m3u8, named by the
    rendition's content like its segments (edgeflix/http/content.py)."""
    return media_playlist_name(media.init_name)


def media_playlist(media: Media) -> str:
    durations = [s.duration / media.timescale for s in media.segments]
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{VERSION}",
        f"#EXT-X-TARGETDURATION:{media.target_seconds}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{media.init_name}"',
    ]
    for segment, seconds in zip(media.segments, durations, strict=True):
        lines += [f"#EXTINF:{seconds:.6f},", segment.name]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def master_playlist(
    videos: Sequence[Media], audio: Media | None, language: str | None = None
) -> str:
    """Variants in the order given (the first is where most players start); the audio's
    `language` (RFC 5646, origin/languages.py) when the source states it."""
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio is not None:
        tagged = f'LANGUAGE="{language}",' if language else ""
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{AUDIO_GROUP}",NAME="Main",{tagged}DEFAULT=YES,'
            f'AUTOSELECT=YES,CHANNELS="{audio.channels or 2}",'
            f'URI="{audio.id}/{playlist_name(audio)}"'
        )
    for video in videos:
        # BANDWIDTH covers everything a client fetches for the variant: video plus audio.
        peak = video.peak_bps() + (audio.peak_bps() if audio else 0)
        average = video.average_bps() + (audio.average_bps() if audio else 0)
        codecs = video.codecs + (f",{audio.codecs}" if audio else "")
        attrs = [
            f"BANDWIDTH={peak}",
            f"AVERAGE-BANDWIDTH={average}",
            f'CODECS="{codecs}"',
            f"RESOLUTION={video.width}x{video.height}",
        ]
        if video.frame_rate:
            attrs.append(f"FRAME-RATE={float(video.frame_rate):.3f}")
        if audio is not None:
            attrs.append(f'AUDIO="{AUDIO_GROUP}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), f"{video.id}/{playlist_name(video)}"]
    return "\n".join(lines) + "\n"
