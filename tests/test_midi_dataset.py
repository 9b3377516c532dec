"""MIDI songs as multitrack data: the SMF reader/writer, channel-to-stem rules, fluidsynth renders."""

from __future__ import annotations

import os
import shutil
import struct

import numpy as np
import pytest
import soundfile as sf

from auralflow_dist.data import midi
from auralflow_dist.data.generate import STEMS
from auralflow_dist.errors import ConfigError

RATE = 44100
DIVISION = 480  # ticks per quarter note; 120 bpm, so 960 ticks a second
SONG = "/usr/share/planetblupi/music/music005.mid"  # all four groups play from the first beat

needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not os.path.isfile(midi.SOUNDFONT),
    reason="rendering needs fluidsynth and a GM soundfont "
    "(apt-get install fluidsynth fluid-soundfont-gm)",
)


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def _track(events: list[tuple[int, bytes]]) -> bytes:
    """An MTrk chunk of (absolute tick, event) pairs, repeated channel statuses left out."""
    body, tick, running = bytearray(), 0, None
    for at, event in events:
        body += _vlq(at - tick)
        body += event[1:] if event[0] == running else event
        running = event[0] if event[0] < 0xF0 else None
        tick = at
    return b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def _notes(channel: int, pitches: list[int], beats: float = 0.5) -> list[tuple[int, bytes]]:
    """One note after another, each ``beats`` long, note-off as a note-on of velocity 0."""
    events, length = [], int(beats * DIVISION)
    for i, pitch in enumerate(pitches):
        events += [(i * length, bytes([0x90 | channel, pitch, 100]))]
        events += [((i + 1) * length, bytes([0x90 | channel, pitch, 0]))]
    return events


EOT = b"\xff\x2f\x00"
TEMPO = [
    (0, b"\xff\x03\x05tempo"),  # track name
    (0, b"\xff\x58\x04\x04\x02\x18\x08"),  # 4/4
    (0, b"\xff\x51\x03\x07\xa1\x20"),  # 500000 us a quarter: 120 bpm
    (0, b"\xf0\x05\x7e\x7f\x09\x01\xf7"),  # sysex: GM system on
    (3840, EOT),
]
PARTS = {
    "drums": [*_notes(9, [36, 42, 38, 42] * 2), (3840, EOT)],
    "bass": [(0, b"\xc1\x21"), (0, b"\xb1\x07\x64"), *_notes(1, [36, 43, 41, 38] * 2), (3840, EOT)],
    "lead": [(0, b"\xc2\x50"), *_notes(2, [72, 74, 76, 79, 77, 76, 74, 72]), (3840, EOT)],
    "pad": [(0, b"\xc3\x30"), *_notes(3, [48, 52, 55, 53], beats=1.0), (3840, EOT)],
}


def _smf(*parts: str) -> bytes:
    """A format 1 song: the tempo track, then the named parts, one track each."""
    chunks = [_track(TEMPO), *(_track(PARTS[name]) for name in parts)]
    return b"MThd" + struct.pack(">IHHH", 6, 1, len(chunks), DIVISION) + b"".join(chunks)


def test_reader_expands_running_status_and_round_trips():
    data = _smf("drums", "bass", "lead", "pad")
    song = midi.read_midi(data)
    assert (song.format, song.division, len(song.tracks)) == (1, DIVISION, 5)
    assert song.tracks[0] == tuple(TEMPO)
    for track, name in zip(song.tracks[1:], PARTS, strict=True):
        assert track == tuple(PARTS[name])  # every status byte back, though the file left most out
    assert len(midi.write_midi(song)) > len(data)  # the writer spells every status out
    assert midi.read_midi(midi.write_midi(song)) == song
    assert midi.write_midi(midi.read_midi(midi.write_midi(song))) == midi.write_midi(song)


def test_reader_rejects_broken_files():
    data = _smf("lead")
    with pytest.raises(midi.MidiError, match="cut short"):
        midi.read_midi(data[:-3])
    with pytest.raises(midi.MidiError, match="format 2"):
        midi.read_midi(data[:8] + b"\x00\x02" + data[10:])
    orphan = b"MTrk" + struct.pack(">I", 3) + b"\x00\x3c\x40"  # data bytes before any status
    with pytest.raises(midi.MidiError, match="no running status"):
        midi.read_midi(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96) + orphan)
    with pytest.raises(midi.MidiError, match="MThd"):
        midi.read_midi(b"RIFF" + data)


def test_channels_go_to_stems_by_their_sound():
    song = midi.read_midi(_smf("drums", "bass", "lead", "pad"))
    channels = midi.assign_channels(song)
    assert [(c.channel, c.stem, c.program, c.notes) for c in channels] == [
        (1, "bass", 33, 8),
        (2, "vocals", 80, 8),  # GM 81, square lead
        (3, "other", 48, 4),
        (9, "drums", 0, 8),
    ]
    # A voice or lead is vocals unless it plays the bass line (below C3); a flute is other,
    # however high; a song with neither has silent vocals.
    programs = {4: 0x35, 5: 0x49, 6: 0x57, 7: 0x57}  # GM 54 voice oohs, 74 flute, 88 bass + lead
    pitch = {4: 50, 5: 90, 6: 48, 7: 31}
    parts = [
        e
        for ch, program in programs.items()
        for e in [(0, bytes([0xC0 | ch, program])), *_notes(ch, [pitch[ch]] * 3)]
    ]
    mixed = midi.MidiFile(0, DIVISION, (tuple(sorted(parts)),))
    assert {c.channel: c.stem for c in midi.assign_channels(mixed)} == {
        4: "vocals",
        5: "other",
        6: "vocals",
        7: "bass",
    }
    instrumental = midi.read_midi(_smf("bass", "pad"))
    assert "vocals" not in {c.stem for c in midi.assign_channels(instrumental)}


def test_parts_and_cuts_keep_the_songs_structure():
    song = midi.read_midi(_smf("drums", "bass", "lead", "pad"))
    part = midi.select_channels(song, {1})
    assert part.tracks[0] == song.tracks[0]  # tempo, time signature, sysex, end of track
    assert part.tracks[1] == ((3840, EOT),)  # the drum track: its end only
    assert part.tracks[2] == song.tracks[2]  # bass: program, volume and notes
    cut = midi.cut(song, 1.0)
    assert all(track[-1] == (960, EOT) for track in cut.tracks)
    assert all(tick < 960 for track in cut.tracks for tick, _ in track[:-1])
    # The tempo map: one second at 120 bpm, then 240 bpm (half a second is another 960 ticks).
    faster = midi.MidiFile(1, DIVISION, (((0, TEMPO[2][1]), (960, b"\xff\x51\x03\x03\xd0\x90")),))
    assert midi.cut(faster, 1.5).tracks[0][-1] == (1920, EOT)


def test_split_counts():
    assert [midi.split_counts(n) for n in (1, 2, 3, 4, 10, 20)] == [
        (1, 0, 0),
        (1, 0, 1),
        (1, 1, 1),
        (2, 1, 1),
        (6, 1, 3),
        (12, 2, 6),
    ]


def test_held_out_songs_play_every_stem_where_there_are_enough():
    full, duo = set(STEMS), {"bass", "vocals"}
    # file order from the last back, songs with every stem first: test, then valid
    five = [full, duo, full, duo, duo]  # split_counts(5): 2 train, 1 valid, 2 test
    assert midi.assign_splits(five) == ["test", "train", "test", "train", "valid"]
    assert midi.assign_splits([full, duo, full, full]) == ["train", "train", "valid", "test"]
    assert midi.assign_splits([duo, duo, duo]) == ["train", "valid", "test"]
    assert midi.assign_splits([full, duo, duo], ("a", "b", "c")) == ["c", "a", "b"]
    assert midi.assign_splits([full]) == ["train"]


def test_missing_renderer_or_soundfont_says_what_to_install(tmp_path, monkeypatch):
    song = tmp_path / "song.mid"
    song.write_bytes(_smf("lead"))
    with pytest.raises(ConfigError, match="not found"):
        midi.write_midi_dataset(str(tmp_path / "set"), [str(song)], soundfont=str(tmp_path / "x"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"apt-get install fluidsynth"):
        midi.write_midi_dataset(str(tmp_path / "set"), [str(song)])


def _read_track(url: str) -> dict[str, np.ndarray]:
    out = {}
    for name in ("mixture", *STEMS):
        info = sf.info(f"{url}/{name}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 2, "PCM_16")
        out[name], _ = sf.read(f"{url}/{name}.wav", dtype="float32")
    assert len({x.shape for x in out.values()}) == 1
    return out


def _check_mix(track: dict[str, np.ndarray]) -> None:
    stems = np.sum([track[name] for name in STEMS], axis=0, dtype=np.float32)
    np.testing.assert_array_equal(track["mixture"], stems)  # the 16-bit grid adds exactly
    assert np.abs(track["mixture"]).max() <= 0.9
    assert np.abs(track["mixture"]).max() > 0.85  # scaled up to the peak, not left quiet


@needs_fluidsynth
def test_renders_each_group_alone_exactly_and_repeatably(tmp_path):
    for name, parts in (("full", ("drums", "bass", "lead", "pad")), ("duo", ("bass", "lead"))):
        (tmp_path / f"{name}.mid").write_bytes(_smf(*parts))
    files = [str(tmp_path / "full.mid"), str(tmp_path / "duo.mid")]
    songs = []
    urls = midi.write_midi_dataset(str(tmp_path / "a"), files, progress=lambda *a: songs.append(a))
    assert urls == [f"{tmp_path}/a/test/full", f"{tmp_path}/a/train/duo"]  # test plays every stem
    assert [(done, total) for done, total, _ in songs] == [(1, 2), (2, 2)]
    assert "drums ch10; bass ch2 (GM 34)" in songs[0][2].describe()
    assert "drums silent" in songs[1][2].describe()
    for url, parts in zip(urls, ({*STEMS}, {"bass", "vocals"}), strict=True):
        track = _read_track(url)
        assert 4.0 < track["mixture"].shape[0] / RATE < 12.0  # 4 s of notes and their release
        _check_mix(track)
        for stem in STEMS:
            assert (np.abs(track[stem]).max() > 0.01) == (stem in parts), (url, stem)
    again = midi.write_midi_dataset(str(tmp_path / "b"), files)
    for first, second in zip(urls, again, strict=True):
        for name in ("mixture", *STEMS):
            with open(f"{first}/{name}.wav", "rb") as a, open(f"{second}/{name}.wav", "rb") as b:
                assert a.read() == b.read(), (second, name)
    # A song that lands in another split on a re-render leaves none of its old split behind.
    (moved,) = midi.write_midi_dataset(str(tmp_path / "a"), {"full": files[1]})
    assert moved == f"{tmp_path}/a/train/full"
    assert sorted(os.listdir(tmp_path / "a" / "test")) == []
    assert sorted(os.listdir(tmp_path / "a" / "train")) == ["duo", "full"]


@needs_fluidsynth
@pytest.mark.skipif(
    not os.path.isfile(SONG), reason=f"needs {SONG} (apt-get install planetblupi-music-midi)"
)
def test_renders_the_start_of_a_real_song(tmp_path):
    songs = []
    (url,) = midi.write_midi_dataset(
        str(tmp_path),
        {"Planetblupi music005": SONG},
        seconds=5.0,
        progress=lambda *a: songs.append(a[2]),
    )
    assert url == f"{tmp_path}/train/Planetblupi music005"
    assert {c.stem for c in songs[0].channels} == set(STEMS)
    track = _read_track(url)
    assert track["mixture"].shape[0] == 5 * RATE
    _check_mix(track)
    for stem in STEMS:
        assert np.sqrt(np.mean(np.square(track[stem]))) > 1e-3, stem
