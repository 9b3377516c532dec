"""The audio files a job separates, and the output folder each one gets.

A file's outputs go to ``<save>/<relative folder>/<track>/``, where the relative folder is the
file's folder below the input URL and the track is the file's stem, so a flat folder of songs
gives the seeds' ``<save>/<song>/vocals.wav``, and two ``intro.wav`` in different folders stay
apart. A MUSDB-style ``<track>/mixture.wav`` is named after its folder (``<save>/<track>/``).
Where two inputs still land on one name (``a/x.wav`` beside ``a/x.flac``, or ``a/x.wav`` beside
``a/x/mixture.wav``), each of them keeps its file name instead: ``<save>/a/x.wav/``.

The mapping is one-to-one whatever the names, compared case-insensitively (a macOS or Windows
disk folds case). A name that would still clash gets ``~`` and a hash of its input path on the
part that clashes: one already taken (``x.wav`` beside ``x.flac`` and ``x.wav.wav``), one of the
job's own files at the top of ``--save`` (an input ``_results.csv.wav``), or a name inside
another track's folder that its outputs could take (``x/vocals.wav`` when ``x`` is a track).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import Counter
from dataclasses import dataclass

from auralflow_dist import ffmpeg, storage
from auralflow_dist.attempts import LEDGER_NAME
from auralflow_dist.data import stem_mp4
from auralflow_dist.errors import AudioError
from auralflow_dist.separate.config import DEFAULT_EXTENSIONS, FORMATS
from auralflow_dist.separate.results import RESULTS_NAME

JOB_NAME = "_job.json"  # the run's provenance, at the top of --save
# What the job writes at the top of --save; no track may be named so.
JOB_FILES = (JOB_NAME, LEDGER_NAME, f"{RESULTS_NAME}.parquet", f"{RESULTS_NAME}.csv")
# In a track's folder the job writes stems (<target>.wav, residual.flac) and a marker
# (`track.DONE_NAME`); a nested track of such a name would clash with them.
_OUTPUT_SUFFIXES = tuple("." + f for f in FORMATS)
_TRACK_FILES = ("_done.json",)
_MUSDB_MIXTURE = "mixture"


@dataclass(frozen=True)
class Source:
    """One input file and the output folder (relative to ``--save``) its stems go to."""

    url: str
    track: str


def list_sources(
    audio_url: str, exclude: str | None = None, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
) -> list[Source]:
    """Every audio file at or under ``audio_url`` (`list_inputs`)."""
    return list_inputs(audio_url, exclude, extensions)[0]


def list_inputs(
    audio_url: str, exclude: str | None = None, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
) -> tuple[list[Source], list[str]]:
    """Every file at or under ``audio_url`` with one of ``extensions``, sorted, except those
    under ``exclude``; and the other files there (not separated, but reported).

    ``exclude`` is the output folder: when it lies inside the input folder, a re-run must not
    separate the previous run's stems. A single file named as the input is separated wherever
    it lies: it was asked for.
    """
    suffixes = tuple("." + e for e in extensions)
    storage.check_readable(audio_url)
    if storage.is_dir(audio_url):
        urls = storage.find_files(audio_url)
        if exclude is not None:
            inside = _path(exclude).rstrip("/") + "/"
            urls = [u for u in urls if not _path(u).startswith(inside)]
        others = [u for u in urls if not u.lower().endswith(suffixes)]
        urls = [u for u in urls if u.lower().endswith(suffixes)]
        root = audio_url.rstrip("/")
        relative = [u[len(root) + 1 :] for u in urls]
    else:
        urls, others = [audio_url], []
        relative = [posixpath.basename(audio_url.rstrip("/"))]
        if not relative[0].lower().endswith(suffixes):
            raise AudioError(
                f"{storage.mask_url(audio_url)}: not an audio file "
                f"(expected {', '.join(suffixes)}; --extensions widens the set)"
            )
    sources = [Source(u, t) for u, t in zip(urls, track_names(relative), strict=True)]
    return sources, others


def skip_reason(url: str, extensions: tuple[str, ...]) -> str:
    """Why a file `list_inputs` put among the others is not separated, for its results row."""
    extension = posixpath.splitext(url)[1].lower()
    if ffmpeg.decodes(url) and not ffmpeg.available():
        return f"not separated: {extension} needs ffmpeg, which is not installed"
    return (
        f"not separated: {extension or 'no extension'} is not among --extensions "
        f"({', '.join(extensions)})"
    )


def _path(url: str) -> str:
    """The path as its filesystem names it (absolute for local paths), for comparisons."""
    return storage.filesystem(url)[1]


def track_name(relative: str) -> str:
    """``dir/song.wav`` -> ``dir/song``; ``dir/song/mixture.wav`` -> ``dir/song``;
    MUSDB18's ``dir/song.stem.mp4`` -> ``dir/song``."""
    folder, name = posixpath.split(relative)
    stem = (
        name[: -len(stem_mp4.SUFFIX)] if stem_mp4.is_stem_mp4(name) else posixpath.splitext(name)[0]
    )
    if stem.lower() == _MUSDB_MIXTURE and folder:
        return folder
    return posixpath.join(folder, stem) if folder else stem


def track_names(relative: list[str]) -> list[str]:
    """A distinct output folder for each input path: `track_name`, else its file name, else
    that with a hash (see the module docstring)."""
    names = [track_name(r) for r in relative]
    taken = Counter(n.casefold() for n in names)
    wanted = [r if taken[n.casefold()] > 1 else n for r, n in zip(relative, names, strict=True)]
    final = [""] * len(relative)
    assigned: set[str] = set()
    # Shallow names first: whether a name clashes with a track's outputs depends on the tracks
    # above it, and a renamed part keeps the name's depth.
    for i in sorted(range(len(relative)), key=lambda i: (wanted[i].count("/"), relative[i])):
        parts = wanted[i].split("/")
        salt = 0
        while (at := _clash(parts, assigned)) is not None:
            base = wanted[i].split("/")[at]
            parts[at] = f"{base}~{_digest(relative[i], salt)}"
            salt += 1
        final[i] = "/".join(parts)
        assigned.add(final[i].casefold())
    return final


def _clash(parts: list[str], assigned: set[str]) -> int | None:
    """The index of the part of a name that clashes with ``assigned`` names or job files."""
    folded = [p.casefold() for p in parts]
    if folded[0] in {f.casefold() for f in JOB_FILES}:
        return 0
    for at in range(1, len(parts)):
        output_like = folded[at] in _TRACK_FILES or folded[at].endswith(_OUTPUT_SUFFIXES)
        if output_like and "/".join(folded[:at]) in assigned:
            return at
    return len(parts) - 1 if "/".join(folded) in assigned else None


def _digest(relative: str, salt: int) -> str:
    """8 hex digits fixed by the input's path: a re-run names (and skips) the same folder."""
    return hashlib.sha1(f"{relative}\0{salt}".encode()).hexdigest()[:8]
