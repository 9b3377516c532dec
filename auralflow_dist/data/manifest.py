"""Scan a multitrack dataset once into a manifest: one row per track, its split, stems and header facts.

Listing and probing thousands of files on an object store is slow, so it happens once here, not in
every data task or epoch. Splits are decided per track (never per chunk, so no song leaks across
train/valid/test), sorted and seeded, so every scan of the same files gives the same manifest.
Only headers are read; broken tracks are named before a cluster is started for them.

Layouts: MUSDB18-HQ (``train/``, ``test/``, optionally ``valid/``; each ``<track>/<stem>.<ext>``
with any stem names and an optional ``mixture``), MUSDB18's ``<split>/<track>.stem.mp4``, or a
root of track folders without split folders, split by seeded fractions.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from auralflow_dist import audio, ffmpeg, storage
from auralflow_dist.data import stem_mp4
from auralflow_dist.errors import AuralflowError, ConfigError

MIXTURE = "mixture"
AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")
SPLITS = ("train", "valid", "test")
MANIFEST_NAME = "manifest.parquet"
_SPLIT_FOLDERS = {"train": "train", "test": "test", "valid": "valid", "validation": "valid"}
# MUSDB18's official validation tracks, carved from its train folder.
MUSDB_VALIDATION = frozenset(
    {
        "Actions - One Minute Smile",
        "Clara Berry And Wooldog - Waltz For My Victims",
        "Johnny Lokke - Promises & Lies",
        "Patrick Talbot - A Reason To Leave",
        "Triviul - Angelsaint",
        "Alexander Ross - Goodbye Bolero",
        "Fergessen - Nos Palpitants",
        "Leaf - Summerghost",
        "Skelpolu - Human Mistakes",
        "Young Griffo - Pennies",
        "ANiMAL - Rockshow",
        "James May - On The Line",
        "Meaxic - Take A Step",
        "Traffic Experiment - Sirens",
    }
)
_PROBE_THREADS = 16  # header reads are round trips on object stores: overlap them

SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("track", pa.string()),
        ("mixture_url", pa.string()),
        ("stem_names", pa.list_(pa.string())),
        ("stem_urls", pa.list_(pa.string())),
        ("frames", pa.int64()),
        ("sample_rate", pa.int32()),
        ("channels", pa.int32()),
        ("duration", pa.float64()),
        ("pcm16", pa.bool_()),  # every file 16-bit PCM or narrower; absent in older manifests
    ]
)
_OPTIONAL = {"pcm16": False}


@dataclass
class ScanResult:
    table: pa.Table
    problems: list[str]


@dataclass(frozen=True)
class Track:
    """One manifest row, as data tasks use it."""

    name: str
    mixture_url: str | None
    stem_names: tuple[str, ...]
    stem_urls: tuple[str, ...]
    frames: int
    sample_rate: int
    channels: int
    pcm16: bool = False

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def stem_url(self, name: str) -> str:
        return self.stem_urls[self.stem_names.index(name)]


@dataclass
class _Found:
    """A track as listed, before its headers are read."""

    folder: str | None  # the split its folder names, None in a root without split folders
    name: str
    url: str
    files: dict[str, str] = field(default_factory=dict)  # stem name or "mixture" -> address
    duplicates: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"{self.folder}/{self.name}" if self.folder else self.name

    @property
    def stems(self) -> list[str]:
        return sorted(n for n in self.files if n != MIXTURE)


def scan(
    dataset_url: str,
    strict: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> ScanResult:
    """The manifest of the dataset at ``dataset_url``; broken tracks are skipped and named.

    ``strict`` raises on any problem instead. The validation split is the ``valid/`` (or
    ``validation/``) folder, else MUSDB18's official validation tracks where present in ``train/``,
    else a seeded ``val_fraction`` of the train tracks. A root without split folders is split by
    ``test_fraction`` and ``val_fraction``.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            "val_fraction", "fractions must be in [0, 1) and leave tracks to train on"
        )
    # Stem URLs are read by worker processes, whose working directory is not this one's.
    found, problems = _find_tracks(storage.absolute(dataset_url))
    splits = _assign_splits(found, seed, val_fraction, test_fraction)
    headers = _probe(found)
    common = _common_stems(found)
    rows = []
    for track in found:
        row, reasons = _row(track, headers, common)
        if reasons:
            problems.append(f"{track.label}: {'; '.join(reasons)}")
        else:
            rows.append({"split": splits[track.label], "track": track.name, **row})
    if strict and problems:
        raise AuralflowError(f"{dataset_url}: {len(problems)} problem(s): {' | '.join(problems)}")
    if not rows:
        raise AuralflowError(f"{dataset_url}: no usable tracks ({' | '.join(problems)})")
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["track"]))
    return ScanResult(pa.Table.from_pylist(rows, schema=SCHEMA), problems)


def _find_tracks(dataset_url: str) -> tuple[list[_Found], list[str]]:
    if not storage.is_dir(dataset_url):
        raise AuralflowError(f"{dataset_url}: dataset folder not found")
    urls = [
        u
        for u in storage.find_files(dataset_url, (*AUDIO_EXTENSIONS, "mp4"))
        if not u.lower().endswith(".mp4") or stem_mp4.is_stem_mp4(u)
    ]
    if not urls:
        raise AuralflowError(
            f"{dataset_url}: no audio files (.{', .'.join(AUDIO_EXTENSIONS)} or .stem.mp4) found"
        )
    if any(stem_mp4.is_stem_mp4(u) for u in urls):
        ffmpeg.require(next(u for u in urls if stem_mp4.is_stem_mp4(u)))
    root = dataset_url.rstrip("/")
    parts = [u[len(root) + 1 :].split("/") for u in urls]
    split_layout = any(len(p) > 1 and p[0] in _SPLIT_FOLDERS for p in parts)
    tracks: dict[tuple[str | None, str], _Found] = {}
    problems = []
    for url, rel in zip(urls, parts, strict=True):
        folder = None
        if split_layout:
            if len(rel) < 2 or rel[0] not in _SPLIT_FOLDERS:
                problems.append(f"{url}: outside the train/valid/test folders, ignored")
                continue
            folder, rel = _SPLIT_FOLDERS[rel[0]], rel[1:]
        if stem_mp4.is_stem_mp4(url) and len(rel) == 1:
            name = rel[0][: -len(stem_mp4.SUFFIX)]
            track = tracks.setdefault((folder, name), _Found(folder, name, url))
            track.files = {s: stem_mp4.source(url, i) for i, s in enumerate(stem_mp4.STREAMS)}
            continue
        if len(rel) < 2:
            problems.append(f"{url}: not inside a track folder, ignored")
            continue
        name = "/".join(rel[:-1])
        track = tracks.setdefault((folder, name), _Found(folder, name, posixpath.dirname(url)))
        stem = posixpath.splitext(rel[-1])[0]
        if stem in track.files:
            track.duplicates.add(stem)
        track.files[stem] = url
    return sorted(tracks.values(), key=lambda t: (t.folder or "", t.name)), problems


def _assign_splits(
    found: list[_Found], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """Track label -> split; carved by name, so a broken track never shifts the others' splits."""
    split = {t.label: t.folder or "" for t in found}
    pool = sorted(t.label for t in found if t.folder is None)
    if pool:
        order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
        n_test = _count(len(pool), test_fraction, keep=1)
        n_val = _count(len(pool) - n_test, val_fraction / (1 - test_fraction), keep=1)
        for i, label in enumerate(order):
            split[label] = "test" if i < n_test else "valid" if i < n_test + n_val else "train"
        return split
    if "valid" in split.values():
        return split
    train = sorted(t.name for t in found if t.folder == "train")
    chosen = [n for n in train if n in MUSDB_VALIDATION]
    if not chosen:
        n_val = _count(len(train), val_fraction, keep=1)
        chosen = [train[i] for i in np.random.default_rng(seed).permutation(len(train))[:n_val]]
    for name in chosen:
        split[f"train/{name}"] = "valid"
    return split


def _count(n: int, fraction: float, keep: int) -> int:
    """``round(n * fraction)``, at least one where the fraction is positive, leaving ``keep``."""
    if fraction <= 0 or n <= keep:
        return 0
    return min(max(round(n * fraction), 1), n - keep)


def _probe(found: list[_Found]) -> dict[str, audio.AudioInfo | ffmpeg.StreamInfo | str]:
    """Header of every file (an error line where unreadable), read concurrently."""
    urls = sorted({_file_of(a) for t in found for a in t.files.values()})

    def one(url: str) -> audio.AudioInfo | ffmpeg.StreamInfo | str:
        try:
            return ffmpeg.info(url) if stem_mp4.is_stem_mp4(url) else audio.info(url)
        except AuralflowError as err:
            return str(err)

    with ThreadPoolExecutor(_PROBE_THREADS) as pool:
        return dict(zip(urls, pool.map(one, urls), strict=True))


def _file_of(address: str) -> str:
    """The file that holds a stem: itself, or the .stem.mp4 one of whose streams it is."""
    mp4 = stem_mp4.parse_source(address)
    return mp4[0] if mp4 else address


def _common_stems(found: Iterable[_Found]) -> set[str]:
    """Stems that at least half of the tracks have: a track lacking one is missing a stem."""
    found = list(found)
    counts = Counter(s for t in found for s in t.stems)
    return {s for s, c in counts.items() if 2 * c >= len(found)}


def _row(track: _Found, headers: dict, common: set[str]) -> tuple[dict, list[str]]:
    """The manifest columns of ``track``, or the reasons it cannot be used."""
    reasons = [f"two files for stem {s}" for s in sorted(track.duplicates)]
    missing = sorted(common - set(track.stems))
    if missing:
        reasons.append(f"missing stem {', '.join(missing)}")
    elif not track.stems:
        reasons.append("no stem files")
    if stem_mp4.is_stem_mp4(track.url):
        # One header for all streams: MUSDB's streams share rate and length.
        header = headers[track.url]
        files = {} if isinstance(header, str) else dict.fromkeys(track.files, header)
        if isinstance(header, str):
            reasons.append(f"unreadable: {header}")
        elif header.streams < len(stem_mp4.STREAMS):
            reasons.append(f"has {header.streams} audio streams, a MUSDB .stem.mp4 has 5")
    else:
        files = {name: headers[address] for name, address in sorted(track.files.items())}
        reasons += [f"unreadable: {h}" for h in files.values() if isinstance(h, str)]
    infos = {n: h for n, h in files.items() if not isinstance(h, str)}
    rates = {n: i.sample_rate for n, i in infos.items()}
    lengths = {n: i.frames for n, i in infos.items()}
    if len(set(rates.values())) > 1:
        reasons.append(
            "sample rates differ (" + ", ".join(f"{n} {r} Hz" for n, r in rates.items()) + ")"
        )
    elif len(set(lengths.values())) > 1:
        reasons.append(
            "lengths differ (" + ", ".join(f"{n} {f} frames" for n, f in lengths.items()) + ")"
        )
    elif infos and next(iter(lengths.values())) == 0:
        reasons.append("no audio frames")
    if reasons:
        return {}, reasons
    first = next(iter(infos.values()))
    stems = track.stems
    return {
        "mixture_url": track.files.get(MIXTURE),
        "stem_names": stems,
        "stem_urls": [track.files[s] for s in stems],
        "frames": first.frames,
        "sample_rate": first.sample_rate,
        "channels": max(i.channels for i in infos.values()),
        "duration": first.frames / first.sample_rate,
        "pcm16": all(isinstance(i, audio.AudioInfo) and i.pcm16 for i in infos.values()),
    }, []


def tracks(table: pa.Table, split: str) -> list[Track]:
    """The rows of ``split`` in manifest order."""
    return [
        Track(
            name=r["track"],
            mixture_url=r["mixture_url"],
            stem_names=tuple(r["stem_names"]),
            stem_urls=tuple(r["stem_urls"]),
            frames=r["frames"],
            sample_rate=r["sample_rate"],
            channels=r["channels"],
            pcm16=r["pcm16"],
        )
        for r in table.to_pylist()
        if r["split"] == split
    ]


def write_manifest(table: pa.Table, url: str) -> None:
    """Parquet, written atomically: a training job never reads half a manifest."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(url, sink.getvalue().to_pybytes())


def read_manifest(url: str) -> pa.Table:
    data = storage.read_bytes(url)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as err:
        raise AuralflowError(f"{url}: not a parquet manifest ({err})") from None
    for name, default in _OPTIONAL.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([default] * len(table)))
    missing = [n for n in SCHEMA.names if n not in table.column_names]
    if missing:
        raise AuralflowError(f"{url}: not an auralflow manifest (no column {', '.join(missing)})")
    return table.select(SCHEMA.names).cast(SCHEMA)


def load_manifest(dataset_url: str) -> pa.Table:
    """A prepared manifest (the URL itself, or the dataset's ``manifest.parquet``), else a scan."""
    if dataset_url.endswith(".parquet"):
        return read_manifest(dataset_url)
    storage.check_readable(dataset_url)
    prepared = storage.join(dataset_url, MANIFEST_NAME)
    if storage.exists(prepared):
        return read_manifest(prepared)
    result = scan(dataset_url)
    for problem in result.problems:
        print(f"[train] skipped {problem}", flush=True)
    return result.table


def prepare(
    dataset_url: str, out_url: str | None = None, strict: bool = False, seed: int = 0
) -> tuple[str, ScanResult]:
    """Scan ``dataset_url`` and write its manifest (default ``<dataset_url>/manifest.parquet``)."""
    result = scan(dataset_url, strict=strict, seed=seed)
    out_url = out_url or storage.join(dataset_url, MANIFEST_NAME)
    write_manifest(result.table, out_url)
    return out_url, result
