"""MUSDB18's native ``<track>.stem.mp4`` files: one file, five audio streams (`STREAMS`).

A stem of such a file is addressed as ``<url>#<stream>``; `auralflow_dist.ffmpeg` decodes it range
by range.
"""

from __future__ import annotations

import re

SUFFIX = ".stem.mp4"
STREAMS = ("mixture", "drums", "bass", "other", "vocals")
_SOURCE = re.compile(r"^(?P<url>.+\.stem\.mp4)#(?P<stream>\d+)$", re.IGNORECASE)


def is_stem_mp4(url: str) -> bool:
    return url.lower().endswith(SUFFIX)


def source(url: str, stream: int) -> str:
    """The address of audio stream ``stream`` of the file at ``url``."""
    return f"{url}#{stream}"


def parse_source(address: str) -> tuple[str, int] | None:
    """``(url, stream)`` for a stem address made by `source`, None for a plain audio file URL."""
    match = _SOURCE.match(address)
    return (match["url"], int(match["stream"])) if match else None
