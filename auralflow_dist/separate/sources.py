"""The audio files a job separates, and the output folder each one gets.

A file's outputs go to ``<save>/<relative folder>/<track>/``, where the relative folder is the
file's folder below the input URL and the track is the file's stem, so a flat folder of songs
gives the seeds' ``<save>/<song>/vocals.wav``, and two ``intro.wav`` in different folders stay
apart. A MUSDB-style ``<track>/mixture.wav`` is named after its folder (``<save>/<track>/``).
Where two inputs still land on one name (``a/x.wav`` beside ``a/x.flac``, or ``a/x.wav`` beside
``a/x/mixture.wav``), each of them keeps its file name instead: ``<save>/a/x.wav/``.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass

from auralflow_dist import storage
from auralflow_dist.errors import AudioError

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")
_MUSDB_MIXTURE = "mixture"


@dataclass(frozen=True)
class Source:
    """One input file and the output folder (relative to ``--save``) its stems go to."""

    url: str
    track: str


def list_sources(audio_url: str, exclude: str | None = None) -> list[Source]:
    """Every audio file at or under ``audio_url``, sorted, except those under ``exclude``.

    ``exclude`` is the output folder: when it lies inside the input folder, a re-run must not
    separate the previous run's stems.
    """
    storage.check_readable(audio_url)
    if storage.is_dir(audio_url):
        urls = storage.find_files(audio_url, AUDIO_EXTENSIONS)
        root = audio_url.rstrip("/")
        relative = [u[len(root) + 1 :] for u in urls]
    else:
        urls = [audio_url]
        relative = [posixpath.basename(audio_url.rstrip("/"))]
        if not relative[0].lower().endswith(tuple("." + e for e in AUDIO_EXTENSIONS)):
            raise AudioError(
                f"{storage.mask_url(audio_url)}: not an audio file "
                f"(expected {', '.join('.' + e for e in AUDIO_EXTENSIONS)})"
            )
    if exclude is not None:
        inside = _path(exclude).rstrip("/") + "/"
        keep = [i for i, u in enumerate(urls) if not _path(u).startswith(inside)]
        urls, relative = [urls[i] for i in keep], [relative[i] for i in keep]
    return [Source(u, t) for u, t in zip(urls, track_names(relative), strict=True)]


def _path(url: str) -> str:
    """The path as its filesystem names it (absolute for local paths), for comparisons."""
    return storage.filesystem(url)[1]


def track_name(relative: str) -> str:
    """``dir/song.wav`` -> ``dir/song``; ``dir/song/mixture.wav`` -> ``dir/song``."""
    folder, name = posixpath.split(relative)
    stem = posixpath.splitext(name)[0]
    if stem.lower() == _MUSDB_MIXTURE and folder:
        return folder
    return posixpath.join(folder, stem) if folder else stem


def track_names(relative: list[str]) -> list[str]:
    """`track_name` of each path; inputs that would share a name keep their file names."""
    names = [track_name(r) for r in relative]
    taken = Counter(names)
    return [r if taken[n] > 1 else n for r, n in zip(relative, names, strict=True)]
