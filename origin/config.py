"""The origin's TOML config (`edgeflix origin ingest --config FILE`), validated once.

Environment overrides use the prefix EDGEFLIX_ORIGIN (e.g. EDGEFLIX_ORIGIN__ENCODE__PRESET=slow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgeflix.config import ConfigModel, load_config
from origin.ffmpeg import DEFAULT_PRESET
from origin.replaced import KEEP_S

ENV_PREFIX = "EDGEFLIX_ORIGIN"
Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"]


class EncodeConfig(ConfigModel):
    # Empty: the ffmpeg of the imageio-ffmpeg wheel (or $EDGEFLIX_FFMPEG).
    ffmpeg: str | None = None
    preset: Preset = DEFAULT_PRESET
    audio_kbps: int = Field(128, ge=32, le=512)
    # Encoder threads per rendition; 0 lets each encoder decide.
    threads: int = Field(0, ge=0, le=64)
    # --ladder auto: seconds of the source used for trial encodes (from its middle).
    trial_seconds: float = Field(6.0, gt=0)


class PublishConfig(ConfigModel):
    # After `ingest --replace`, the old version's segments the new one lacks stay servable
    # this long for the players that started on it (origin/replaced.py); 0: not kept.
    replaced_keep_s: float = Field(KEEP_S, ge=0, le=30 * 86400)


class OriginConfig(ConfigModel):
    encode: EncodeConfig = EncodeConfig()
    publish: PublishConfig = PublishConfig()


def load(path: Path | None) -> OriginConfig:
    return load_config(OriginConfig, path, env_prefix=ENV_PREFIX)
