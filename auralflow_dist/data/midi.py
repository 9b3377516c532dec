"""Multitrack songs of real (sampled) instruments: General MIDI files rendered part by part.

A General MIDI song already says which instrument plays what: each channel has a program, and
channel 10 is the drum kit. So one song gives real stems for free: split its channels into the four
MUSDB groups, render each group alone with fluidsynth and a GM soundfont, and the renders sum to the
song. Nothing is downloaded; Debian ships the synthesizer (``fluidsynth``), the soundfont
(``fluid-soundfont-gm``) and ten songs (``planetblupi-music-midi``).

The Standard MIDI File reader and writer are here too (formats 0 and 1): the parts are the song's
own files, filtered by channel, so each part keeps the song's tempo map, sysex and controllers.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import statistics
import struct
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from auralflow_dist import audio, storage
from auralflow_dist.data.generate import FORMATS, STEMS
from auralflow_dist.errors import AuralflowError, ConfigError

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"  # Debian's fluid-soundfont-gm
SONGS = "/usr/share/planetblupi/music"  # Debian's planetblupi-music-midi
SPLITS = ("train", "valid", "test")
DRUM_CHANNEL = 9  # channel 10, 0-based
BASS_PROGRAMS = range(32, 40)  # GM 33-40 (acoustic to synth bass), 0-based
# GM 53-55 (choir, voice oohs, synth voice) and 81-88 (the synth leads), 0-based: the parts that
# sound like a singer. A separator learns a stem by its sound, so a stem must be one family of
# sounds in every song (a role such as "the lead melody" made a brass section and a woodblock
# the test songs' vocals, a sound no training song's vocals had).
VOICE_PROGRAMS = (*range(52, 55), *range(80, 88))
# A voice or lead whose median note is below C3 plays the bass line: MUSDB puts a synth lead
# doubling the bass in ``bass``. (planetblupi's music009 has its only bass line on GM 88,
# "bass + lead", at G1; as vocals it taught the vocals model to take the bass.)
BASS_REGISTER = 48  # MIDI note C3

_PCM_STEP = 1.0 / 32768.0  # soundfile decodes 16-bit PCM as n / 32768
_PEAK = 0.9 - 2 * _PCM_STEP  # quantising four stems moves the mixture by at most 4 half-steps
_EOT = b"\xff\x2f\x00"  # the end-of-track meta event
_GAIN = 0.5  # fluidsynth's master gain; renders are float, so any level works before mixing
# Every setting a render depends on, stated rather than left to the build's defaults: the player
# clocked by samples (not the wall clock), one synthesis thread, fixed effects and voice budget.
_SYNTH_SETTINGS = {
    "player.timing-source": "sample",
    "synth.cpu-cores": "1",
    "synth.polyphony": "256",
    "synth.reverb.active": "1",
    "synth.reverb.room-size": "0.2",
    "synth.reverb.damp": "0.0",
    "synth.reverb.width": "0.5",
    "synth.reverb.level": "0.9",
    "synth.chorus.active": "1",
    "synth.chorus.nr": "3",
    "synth.chorus.level": "2.0",
    "synth.chorus.speed": "0.3",
    "synth.chorus.depth": "8.0",
}
RENDER_TIMEOUT_S = 1800.0  # a half-hour song renders in about a minute; a hung one is killed


class MidiError(AuralflowError):
    """A MIDI file cannot be parsed or rendered; the message says where."""


Event = tuple[int, bytes]  # (absolute tick, the event's bytes with its status byte)


@dataclass(frozen=True)
class MidiFile:
    """A Standard MIDI File: format, the header's division, and each track's events in order.

    Channel events carry their status byte even where the file used running status; meta events are
    ``FF type length data`` and sysex ``F0|F7 length data``, lengths as the file's variable-length
    quantities, so writing needs no knowledge of any event's meaning.
    """

    format: int
    division: int
    tracks: tuple[tuple[Event, ...], ...]


def read_midi(data: bytes) -> MidiFile:
    """Parse an SMF of format 0 or 1; unknown chunks are skipped, as the standard asks."""
    if data[:4] != b"MThd" or len(data) < 14:
        raise MidiError("not a Standard MIDI File (no MThd header)")
    (length,) = struct.unpack(">I", data[4:8])
    fmt, count, division = struct.unpack(">HHH", data[8:14])
    if fmt not in (0, 1):
        raise MidiError(f"SMF format {fmt} is not supported (only 0 and 1)")
    if division == 0:
        raise MidiError("the header's division is 0")
    tracks, pos = [], 8 + length
    while len(tracks) < count:
        if pos + 8 > len(data):
            raise MidiError(f"the header promises {count} tracks, the file holds {len(tracks)}")
        kind, (size,) = data[pos : pos + 4], struct.unpack(">I", data[pos + 4 : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        if len(body) < size:
            raise MidiError(f"track {len(tracks)} is cut short")
        if kind == b"MTrk":
            tracks.append(_read_track(body, len(tracks)))
        pos += 8 + size
    return MidiFile(fmt, division, tuple(tracks))


def _read_track(body: bytes, index: int) -> tuple[Event, ...]:
    events, tick, pos, running = [], 0, 0, None
    try:
        while pos < len(body):
            delta, pos = _read_vlq(body, pos)
            tick += delta
            if body[pos] >= 0x80:
                status, pos = body[pos], pos + 1
            elif running is not None:
                status = running
            else:
                raise MidiError(f"track {index}: a data byte at {pos} with no running status")
            if status == 0xFF:  # meta: type, length, data
                length, start = _read_vlq(body, pos + 1)
                end, running = start + length, None
            elif status in (0xF0, 0xF7):  # sysex (or its continuation): length, data
                length, start = _read_vlq(body, pos)
                end, running = start + length, None
            elif status >= 0xF0:
                raise MidiError(f"track {index}: status {status:#04x} has no place in a MIDI file")
            else:
                end, running = pos + (1 if status & 0xF0 in (0xC0, 0xD0) else 2), status
                if any(b >= 0x80 for b in body[pos:end]):
                    raise MidiError(f"track {index}: a status byte inside an event at {pos}")
            if end > len(body):
                raise IndexError(end)
            events.append((tick, bytes([status]) + body[pos:end]))
            pos = end
            if status == 0xFF and events[-1][1][1] == 0x2F:  # end of track: nothing may follow
                break
    except IndexError:
        raise MidiError(f"track {index}: an event is cut short at the end of the track") from None
    return tuple(events)


def _read_vlq(data: bytes, pos: int) -> tuple[int, int]:
    """A variable-length quantity (7 bits a byte, high bit set on all but the last) and the end."""
    value = 0
    for i in range(4):
        byte = data[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    raise MidiError(f"a variable-length quantity at {pos} is longer than 4 bytes")


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def write_midi(midi: MidiFile) -> bytes:
    """The SMF bytes of ``midi``, every event with its status byte (no running status)."""
    chunks = [b"MThd", struct.pack(">IHHH", 6, midi.format, len(midi.tracks), midi.division)]
    for track in midi.tracks:
        body, tick = bytearray(), 0
        for at, event in track:
            body += _vlq(at - tick) + event
            tick = at
        chunks += [b"MTrk", struct.pack(">I", len(body)), bytes(body)]
    return b"".join(chunks)


def cut(midi: MidiFile, seconds: float) -> MidiFile:
    """The first ``seconds`` of ``midi``: later events dropped, every track ending at the cut."""
    end = _tick_at(midi, seconds)
    tracks = []
    for track in midi.tracks:
        kept = [(tick, event) for tick, event in track if tick < end and event[:2] != _EOT[:2]]
        tracks.append((*kept, (end, _EOT)))
    return MidiFile(midi.format, midi.division, tuple(tracks))


def _released(midi: MidiFile) -> MidiFile:
    """``midi`` with every channel released (pedals up, all notes off) where its track ends.

    fluidsynth renders until the last voice dies away, so a note left held, by a missing note-off
    or by `cut`, would otherwise sustain (and render) forever.
    """
    tracks = []
    for track in midi.tracks:
        body = track[:-1] if track and track[-1][1][:2] == _EOT[:2] else track
        end = track[-1][0] if track else 0
        channels = sorted({event[0] & 0x0F for _, event in body if event[0] < 0xF0})
        release = [(end, bytes([0xB0 | ch, cc, 0])) for ch in channels for cc in (64, 66, 123)]
        tracks.append((*body, *release, (end, _EOT)))
    return MidiFile(midi.format, midi.division, tuple(tracks))


def _tick_at(midi: MidiFile, seconds: float) -> int:
    """The first tick at or after ``seconds`` into the song, by its tempo map (or SMPTE rate)."""
    if midi.division & 0x8000:  # SMPTE: frames per second (negated high byte) x ticks per frame
        fps = 256 - (midi.division >> 8)
        return math.ceil(seconds * (29.97 if fps == 29 else fps) * (midi.division & 0xFF))
    tempos = sorted(
        (tick, int.from_bytes(event[3:6], "big"))
        for track in midi.tracks
        for tick, event in track
        if event[:3] == b"\xff\x51\x03"
    )
    tick, time, tempo = 0, 0.0, 500_000  # microseconds per quarter note; 120 bpm until told
    for at, new in tempos:
        span = (at - tick) * tempo / 1e6 / midi.division
        if time + span >= seconds:
            break
        tick, time, tempo = at, time + span, new
    return tick + math.ceil((seconds - time) * 1e6 / tempo * midi.division)


@dataclass(frozen=True)
class Channel:
    """One MIDI channel of a song: its GM program, how much it plays, and the stem it goes to."""

    channel: int  # 0-based: 9 is GM channel 10
    program: int  # 0-based GM program: the channel's first program change, else 0
    notes: int  # note-ons with a non-zero velocity
    median_pitch: float
    stem: str


def assign_channels(midi: MidiFile) -> tuple[Channel, ...]:
    """Every channel that plays a note, in channel order, with its stem.

    By the sound of the channel's first program, as MUSDB groups a song's instruments: channel 10
    is ``drums``, a GM bass (33-40) or a voice or lead in the bass register (`BASS_REGISTER`) is
    ``bass``, any other GM voice or synth lead (`VOICE_PROGRAMS`) is ``vocals``, and every other
    channel is ``other``. A song without a voice or lead has silent vocals, as instrumentals do in
    MUSDB.
    """
    programs: dict[int, tuple[int, int]] = {}  # channel: (tick, program) of its first change
    pitches: dict[int, list[int]] = {}
    for track in midi.tracks:
        for tick, event in track:
            kind, channel = event[0] & 0xF0, event[0] & 0x0F
            if kind == 0xC0 and (channel not in programs or tick < programs[channel][0]):
                programs[channel] = (tick, event[1])
            elif kind == 0x90 and event[2] > 0:
                pitches.setdefault(channel, []).append(event[1])
    channels = []
    for ch in sorted(pitches):
        program = programs[ch][1] if ch in programs else 0
        notes = pitches[ch]
        median = float(statistics.median(notes))
        if ch == DRUM_CHANNEL:
            stem = "drums"
        elif program in BASS_PROGRAMS:
            stem = "bass"
        elif program in VOICE_PROGRAMS:
            stem = "bass" if median < BASS_REGISTER else "vocals"
        else:
            stem = "other"
        channels.append(Channel(ch, program, len(notes), median, stem))
    return tuple(channels)


def select_channels(midi: MidiFile, channels: set[int]) -> MidiFile:
    """``midi`` with only the channel events of ``channels``; meta and sysex events all stay."""
    return MidiFile(
        midi.format,
        midi.division,
        tuple(
            tuple(e for e in track if e[1][0] >= 0xF0 or e[1][0] & 0x0F in channels)
            for track in midi.tracks
        ),
    )


@dataclass(frozen=True)
class RenderedSong:
    """What `write_midi_dataset` made of one song, for progress reports."""

    name: str
    split: str
    url: str
    seconds: float
    channels: tuple[Channel, ...]

    def describe(self) -> str:
        """One line: the song, its split and length, and each stem's channels and GM programs."""
        groups = []
        for stem in STEMS:
            parts = [
                f"ch{c.channel + 1}"
                + ("" if c.channel == DRUM_CHANNEL else f" (GM {c.program + 1})")
                for c in self.channels
                if c.stem == stem
            ]
            groups.append(f"{stem} {', '.join(parts) or 'silent'}")
        return f"{self.name} ({self.split}, {self.seconds:.1f} s): {'; '.join(groups)}"


def default_songs() -> dict[str, str]:
    """Debian's planetblupi songs by track name (``Planetblupi music003``), in file order."""
    paths = sorted(glob.glob(os.path.join(SONGS, "*.mid")))
    if not paths:
        raise ConfigError(
            "midi_files",
            f"no songs in {SONGS}: install the Debian package planetblupi-music-midi "
            "(apt-get install planetblupi-music-midi), or name MIDI files",
        )
    return {f"Planetblupi {os.path.splitext(os.path.basename(p))[0]}": p for p in paths}


def split_counts(songs: int) -> tuple[int, int, int]:
    """How many of ``songs`` go to train, valid and test, in that order.

    Test takes 30% (rounded, at least one from two songs), valid 10% (rounded, at least one from
    three songs), train the rest: 10 songs give 6/1/3, 3 give 1/1/1, one gives a train split alone.
    """
    test = max(1, round(0.3 * songs)) if songs >= 2 else 0
    valid = max(1, round(0.1 * songs)) if songs >= 3 else 0
    return songs - valid - test, valid, test


def assign_splits(stems: Sequence[set[str]], splits: Sequence[str] = SPLITS) -> list[str]:
    """Each song's split, given the stems each one plays, with `split_counts` songs per split.

    The held-out songs are, where there are enough, songs that play all four stems, taken from
    the last in file order back (test first, then valid), then the other songs from the last
    back: as in MUSDB, every target is then scored on every test song and validated on the
    valid ones. (Taken in plain file order, the planetblupi songs gave a valid song with no
    ``other`` part, whose best epoch was picked on silence, and one test song with vocals.)
    """
    _, valid, test = split_counts(len(stems))
    complete = [i for i in reversed(range(len(stems))) if stems[i] >= set(STEMS)]
    held = complete + [i for i in reversed(range(len(stems))) if i not in complete]
    chosen = [splits[0]] * len(stems)
    for rank, index in enumerate(held[: test + valid]):
        chosen[index] = splits[2] if rank < test else splits[1]
    return chosen


def write_midi_dataset(
    url: str,
    midi_files: Sequence[str] | Mapping[str, str] | None = None,
    sample_rate: int = 44100,
    seconds: float | None = None,
    splits: Sequence[str] = SPLITS,
    fmt: str = "wav",
    progress: Callable[[int, int, RenderedSong], None] | None = None,
    soundfont: str = SOUNDFONT,
) -> list[str]:
    """Render MIDI songs to ``<url>/<split>/<track>/{mixture,vocals,drums,bass,other}.<fmt>``.

    ``midi_files`` are paths or URLs (named by their file names) or a mapping of track names to
    them, by default `default_songs`; they go to the three ``splits`` by `assign_splits`.
    ``seconds`` keeps each song's first seconds, else the whole song plays out to its last echo.
    Each 16-bit track holds ``mixture == sum(stems)`` exactly and peaks at most at 0.9. A song
    rendered into another split of ``url`` before (when the rules or the songs were different) is
    removed from there once its new track is written, so no song is in two splits. Returns the
    track folder URLs in song order; ``progress(done, total, song)`` follows each track.
    """
    songs = _named(default_songs() if midi_files is None else midi_files)
    if not 8000 <= sample_rate <= 96000:
        raise ConfigError("sample_rate", f"fluidsynth renders 8000 to 96000 Hz, got {sample_rate}")
    if seconds is not None and seconds <= 0:
        raise ConfigError("seconds", f"must be positive, got {seconds}")
    if len(splits) != 3 or not all(splits) or len(set(splits)) != 3:
        raise ConfigError("splits", f"must be three distinct names, got {list(splits)}")
    if fmt not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    fluidsynth = shutil.which("fluidsynth")
    if fluidsynth is None:
        raise ConfigError(
            "source",
            "MIDI songs are rendered by fluidsynth, which is not on PATH: install the Debian "
            "package fluidsynth (apt-get install fluidsynth)",
        )
    if not os.path.isfile(soundfont):
        hint = " (apt-get install fluid-soundfont-gm)" if soundfont == SOUNDFONT else ""
        raise ConfigError("soundfont", f"{soundfont} not found{hint}")

    parsed = {}
    for name, path in songs.items():
        try:
            midi = read_midi(storage.read_bytes(path))
            midi = cut(midi, seconds) if seconds is not None else midi
        except MidiError as err:
            raise MidiError(f"{path}: {err}") from None
        parsed[name] = midi, assign_channels(midi)
    chosen = assign_splits([{c.stem for c in ch} for _, ch in parsed.values()], splits)
    urls = []
    for index, ((name, (midi, channels)), split) in enumerate(
        zip(parsed.items(), chosen, strict=True)
    ):
        track_url = storage.join(url, split, name)
        try:
            frames = _write_song(
                midi, channels, track_url, sample_rate, seconds, fmt, fluidsynth, soundfont
            )
        except MidiError as err:
            raise MidiError(f"{songs[name]}: {err}") from None
        # Only once the new track is written: a failed render leaves the old one in place.
        for other in splits:
            if other != split:
                storage.remove(storage.join(url, other, name), missing_ok=True)
        urls.append(track_url)
        if progress is not None:
            song = RenderedSong(name, split, track_url, frames / sample_rate, channels)
            progress(index + 1, len(songs), song)
    return urls


def _write_song(
    midi: MidiFile,
    channels: tuple[Channel, ...],
    track_url: str,
    sample_rate: int,
    seconds: float | None,
    fmt: str,
    fluidsynth: str,
    soundfont: str,
) -> int:
    """Render one song's groups and write its track; returns its length in frames."""
    with tempfile.TemporaryDirectory(prefix="auralflow-midi-") as tmp:
        renders = {}
        for stem in STEMS:
            group = {c.channel for c in channels if c.stem == stem}
            if group:
                part = _released(select_channels(midi, group))
                renders[stem] = _render(part, sample_rate, tmp, stem, fluidsynth, soundfont)
        if seconds is not None:
            frames = round(seconds * sample_rate)
        else:
            frames = max((sf.info(p).frames for p in renders.values()), default=0)
        if frames == 0:
            raise MidiError("plays no notes")
        _write_track(track_url, renders, frames, sample_rate, fmt)
    return frames


def _named(midi_files: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(midi_files, Mapping):
        songs = dict(midi_files)
    else:
        songs = {}
        for path in midi_files:
            name = os.path.splitext(path.rstrip("/").rsplit("/", 1)[-1])[0]
            if name in songs:
                raise ConfigError("midi_files", f"two songs would be named {name!r}")
            songs[name] = path
    if not songs:
        raise ConfigError("midi_files", "no MIDI files given")
    if any(not name or "/" in name for name in songs):
        raise ConfigError(
            "midi_files", f"track names must be non-empty, with no '/': {list(songs)}"
        )
    return songs


def _render(
    part: MidiFile, sample_rate: int, folder: str, name: str, fluidsynth: str, soundfont: str
) -> str:
    """Render ``part`` with fluidsynth to a float WAV in ``folder`` (no dither, no clipping)."""
    midi_path, wav_path = os.path.join(folder, f"{name}.mid"), os.path.join(folder, f"{name}.wav")
    with open(midi_path, "wb") as f:
        f.write(write_midi(part))
    settings = [arg for key, value in _SYNTH_SETTINGS.items() for arg in ("-o", f"{key}={value}")]
    command = [
        fluidsynth, "-ni", "-q", "-g", str(_GAIN), "-r", str(sample_rate), "-O", "float",
        "-T", "wav", *settings, "-F", wav_path, soundfont, midi_path,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise MidiError(f"fluidsynth took over {RENDER_TIMEOUT_S:.0f} s on {name}") from None
    if done.returncode != 0 or not os.path.isfile(wav_path):
        said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise MidiError(f"fluidsynth failed on {name} (exit {done.returncode}): {said[0]}")
    return wav_path


def _write_track(
    track_url: str, renders: Mapping[str, str], frames: int, sample_rate: int, fmt: str
) -> None:
    """Write every stem at one common gain on the 16-bit grid, then their exact sum as the mixture.

    The gain puts the loudest of the stems and their sum at ``_PEAK``; renders are cut or padded
    with silence to ``frames``. One stem is in memory at a time (a song can run half an hour).
    """
    gain = np.float32(_PEAK / max(_peak(list(renders.values()), frames), 1e-9) / _PCM_STEP)
    mixture = np.zeros((frames, 2), dtype=np.float32)
    for stem in (*STEMS, "mixture"):
        if stem == "mixture":
            x = mixture
        elif stem in renders:
            x, _ = sf.read(renders[stem], frames=frames, dtype="float32", fill_value=0.0)
            x *= gain
            np.round(x, out=x)
            x *= np.float32(_PCM_STEP)  # multiples of 2**-15 below 4 add exactly in float32
            mixture += x
        else:
            x = np.zeros_like(mixture)
        audio.write(
            storage.join(track_url, f"{stem}.{fmt}"),
            x.T,
            sample_rate,
            format=FORMATS[fmt],
            clip="error",
        )


def _peak(paths: list[str], frames: int, block: int = 1 << 20) -> float:
    """The largest magnitude in any of the renders or in their sum over ``frames``, block by block."""
    files = [sf.SoundFile(p) for p in paths]
    peak = 0.0
    try:
        for start in range(0, frames, block):
            n = min(block, frames - start)
            parts = [f.read(n, dtype="float32", fill_value=0.0) for f in files]
            peak = max(peak, *(float(np.abs(x).max()) for x in [*parts, sum(parts)]))
    finally:
        for f in files:
            f.close()
    return peak
