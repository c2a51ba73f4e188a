"""Small real titles on disk for the storage tests: random bytes and a files.json from
edgeflix.titlefiles (render + scan), exactly what `appliance load` expects from an origin."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

from appliance.safefiles import Throttle
from edgeflix import titlefiles
from edgeflix.http.content import content_tag, segment_name

DEFAULT_SIZES = (70_000, 50_000, 30_000, 20_000, 9_000, 1_000)


def make_title(
    root: Path,
    title_id: str,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seed: int = 0,
    *,
    content_named: bool = False,
) -> Path:
    """Write `root/title_id/` with segments of `sizes` bytes, a playlist and files.json.
    `content_named`: segments named as the origin names them (seg_<tag>_00000.m4s, the tag
    differing per seed, as a re-encode's does), else seg0000.m4s."""
    rng = random.Random(f"{title_id}-{seed}")
    folder = root / title_id
    for i, size in enumerate(sizes):
        name = f"seg{i:04d}.m4s"
        if content_named:
            digest = hashlib.sha256(f"{title_id}-{seed}-v{i % 2}".encode()).hexdigest()
            name = segment_name(content_tag(digest), i)
        path = folder / f"v{i % 2}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    (folder / "master.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:7\n")
    entries = titlefiles.scan(folder)
    model = titlefiles.TitleFiles(
        id=title_id,
        title=f"Test {title_id}",
        duration=float(len(sizes)),
        segment_seconds=1.0,
        created="2026-01-01T00:00:00Z",
        renditions=(),
        files=tuple(entries),
        total_bytes=sum(e.size for e in entries),
    )
    (folder / titlefiles.FILES_JSON).write_bytes(titlefiles.render(model))
    return folder


def title_bytes(folder: Path) -> int:
    """Everything `load` copies: the files plus files.json itself."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def storage_toml(
    tmp_path: Path, *, max_bytes: int | None = None, tiers: Sequence[str] = ("ssd", "hdd")
) -> Path:
    """A config with one disk folder per tier under tmp_path, tiers set explicitly."""
    lines = ["[storage]", f'index = "{tmp_path / "var" / "index.sqlite"}"', "disks = ["]
    for i, tier in enumerate(tiers):
        disk = tmp_path / f"{tier}{i}"
        disk.mkdir(parents=True, exist_ok=True)
        cap = f", max_bytes = {max_bytes}" if max_bytes else ""
        lines.append(f'  {{ path = "{disk}", tier = "{tier}"{cap} }},')
    lines.append("]")
    path = tmp_path / "appliance.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def fake_throttle(bytes_per_s: float) -> tuple[Throttle, list[float]]:
    """A Throttle on a fake clock that its sleeps move on; the sleeps are recorded."""
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    return Throttle(bytes_per_s, clock=lambda: now[0], sleep=sleep), slept
