"""Small synthetic multitrack songs in MUSDB18-HQ layout, so demos, tests and benchmarks need no download.

Each track is a short song in a random key, tempo and chord progression: a formant-filtered singing
voice, a drum kit, a bass line and pads with an arpeggio. The stems overlap in time and frequency as
real ones do, so a separation model has real work to do, yet any number of tracks is generated in
seconds, reproducibly from a seed, with vectorised numpy (wavetable oscillators, one array per note).

Stems are quantised to the 16-bit grid ``n / 32768`` before the mixture is summed: those values and
their sums are exact in float32 and in 16-bit PCM, so a mixture read back from disk equals the sum of
the stems read back, sample for sample, as MUSDB's ``mixture = sum(stems)`` promises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from auralflow_dist import audio, storage
from auralflow_dist.errors import ConfigError

STEMS = ("vocals", "drums", "bass", "other")
# Formats written by `write_dataset`, by file extension.
FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}

_PCM_STEP = 1.0 / 32768.0  # soundfile decodes 16-bit PCM as n / 32768
_PEAK = 0.89  # mixture peak after the common gain; quantisation adds at most 4 half-steps
_TABLE = 2048  # samples per wavetable cycle
_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
# Chord progressions as scale degrees (0 = I), one chord per bar.
_PROGRESSIONS = ((0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 4, 3), (0, 3, 0, 4), (3, 4, 5, 0))
# Vowel targets: formant centres F1-F3 (Hz); bandwidths and gains are shared.
_VOWELS = np.array(
    [[800, 1200, 2500], [500, 1900, 2500], [300, 2300, 3000], [500, 900, 2400], [300, 800, 2250]],
    dtype=np.float64,
)
_FORMANT_BANDWIDTH = np.array([90.0, 110.0, 170.0])
_FORMANT_GAIN = np.array([1.0, 0.5, 0.25])
# Bass rhythms per bar: (start in eighths, length in eighths, semitones above the chord root).
_BASS_RHYTHMS = (
    ((0, 2, 0), (2, 2, 0), (4, 2, 0), (6, 2, 0)),
    tuple((i, 1, 0) for i in range(8)),
    ((0, 3, 0), (3, 1, 7), (4, 3, 0), (7, 1, 12)),
    ((0, 3, 0), (3, 3, 0), (6, 2, 7)),
    ((0, 4, 0), (4, 2, 7), (6, 2, 12)),
)


@dataclass(frozen=True)
class _Song:
    """What every stem of one track agrees on: length, tempo, key and chords."""

    sample_rate: int
    length: int  # samples
    beat: float  # seconds per beat (4 beats to the bar)
    key: int  # pitch class of the tonic, 0 = C
    progression: tuple[int, ...]

    @property
    def beats(self) -> float:
        return self.length / (self.beat * self.sample_rate)

    @property
    def bars(self) -> int:
        return int(np.ceil(self.beats / 4))

    def at(self, beat: float) -> int:
        """Sample index of a (fractional) beat."""
        return round(beat * self.beat * self.sample_rate)

    def chord(self, bar: int) -> np.ndarray:
        """Scale steps of the bar's triad (root, third, fifth)."""
        return self.progression[bar % len(self.progression)] + np.array([0, 2, 4])

    def midi(self, steps: np.ndarray | int, tonic: int) -> np.ndarray:
        """MIDI notes of major-scale ``steps`` above the tonic at MIDI ``tonic + key``."""
        steps = np.asarray(steps)
        return tonic + self.key + 12 * (steps // 7) + _MAJOR[steps % 7]


def synthesize_track(seed: int, seconds: float, sample_rate: int = 44100) -> dict[str, np.ndarray]:
    """One song: ``mixture`` and the four stems, float32 ``(2, samples)``, ``mixture == sum(stems)``.

    The same seed gives identical arrays. All values lie on the 16-bit grid and the mixture peaks
    below 0.9, so 16-bit files hold the track exactly.
    """
    _check_track(seed, seconds, sample_rate)
    # One stream per part, so changing how one stem is drawn never changes the others.
    song_rng, *stem_rngs, level_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2 + len(STEMS))
    )
    song = _Song(
        sample_rate=sample_rate,
        length=round(seconds * sample_rate),
        beat=60.0 / song_rng.uniform(80, 160),
        key=int(song_rng.integers(12)),
        progression=_PROGRESSIONS[song_rng.integers(len(_PROGRESSIONS))],
    )
    render = (_vocals, _drums, _bass, _other)
    stems = {name: f(rng, song) for name, f, rng in zip(STEMS, render, stem_rngs, strict=True)}
    return _mix(level_rng, stems)


def write_dataset(
    url: str,
    tracks: int,
    seconds: float,
    seed: int,
    sample_rate: int = 44100,
    splits: Sequence[str] = ("train", "test"),
    test_fraction: float = 0.25,
    fmt: str = "wav",
    subtype: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write ``<url>/<split>/Track NNN - Gen <seed>/{mixture,vocals,drums,bass,other}.<fmt>``.

    ``url`` is a local path or any fsspec URL. With two ``splits`` the last ``test_fraction`` of
    the tracks (at least one, never all) goes to the second; with one, every track goes there.
    ``subtype`` defaults to the format's own (WAV/FLAC: PCM_16, OGG: VORBIS, MP3: MPEG_LAYER_III).
    Returns the track folder URLs in track order; ``progress(done, total)`` follows each track.
    """
    _check_track(seed, seconds, sample_rate)
    if tracks < 1:
        raise ConfigError("tracks", f"must be at least 1, got {tracks}")
    if not 1 <= len(splits) <= 2 or not all(splits) or len(set(splits)) != len(splits):
        raise ConfigError("splits", f"must be one or two distinct names, got {list(splits)}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError("test_fraction", f"must be in [0, 1), got {test_fraction}")
    if fmt not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    subtype = (subtype or sf.default_subtype(FORMATS[fmt])).upper()
    if not sf.check_format(FORMATS[fmt], subtype):
        raise ConfigError("subtype", f"{subtype} cannot be written as {fmt}")

    n_test = 0
    if len(splits) == 2 and test_fraction > 0 and tracks > 1:
        n_test = min(max(round(tracks * test_fraction), 1), tracks - 1)
    width = max(3, len(str(tracks - 1)))
    urls = []
    for index in range(tracks):
        split = splits[-1] if index >= tracks - n_test else splits[0]
        track_url = storage.join(url, split, f"Track {index:0{width}d} - Gen {seed}")
        track = synthesize_track(track_seed(seed, index), seconds, sample_rate)
        for name, data in track.items():
            audio.write(
                storage.join(track_url, f"{name}.{fmt}"),
                data,
                sample_rate,
                format=FORMATS[fmt],
                subtype=subtype,
                clip="error",
            )
        urls.append(track_url)
        if progress is not None:
            progress(index + 1, tracks)
    return urls


def _check_track(seed: int, seconds: float, sample_rate: int) -> None:
    if seed < 0:
        raise ConfigError("seed", f"must be non-negative, got {seed}")
    if seconds <= 0:
        raise ConfigError("seconds", f"must be positive, got {seconds}")
    if sample_rate < 8000:
        raise ConfigError("sample_rate", f"must be at least 8000 Hz, got {sample_rate}")


def track_seed(seed: int, index: int) -> int:
    """The `synthesize_track` seed of track ``index`` of a dataset made with ``seed``.

    Hashed, not ``seed + index``: datasets made with neighbouring seeds share no tracks.
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _mix(rng: np.random.Generator, stems: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Set random stem levels, scale everything by one gain below clipping, quantise, sum."""
    for name, x in stems.items():
        rms = float(np.sqrt(np.vdot(x, x) / x.size))
        stems[name] = x * np.float32(0.1 * 10 ** (rng.uniform(-4, 4) / 20) / max(rms, 1e-9))
    peak = max(max(x.max(), -x.min()) for x in [*stems.values(), sum(stems.values())])
    gain = np.float32(min(1.0, _PEAK / max(peak, 1e-9)))
    out = {
        name: (np.round(x * (gain / _PCM_STEP)) * _PCM_STEP).astype(np.float32)
        for name, x in stems.items()
    }
    # Multiples of 2**-15 below 4 in magnitude add exactly in float32.
    return {"mixture": np.sum([out[name] for name in STEMS], axis=0, dtype=np.float32), **out}


def _hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float32) - 69.0) / 12.0)


def _harmonics(f0: float, sample_rate: int, ceiling: float) -> np.ndarray:
    """Harmonic numbers up to ``ceiling`` Hz and a quarter of the rate (room for pitch bends)."""
    top = min(ceiling, 0.25 * sample_rate, (_TABLE // 2 - 1) * f0)
    return np.arange(1, max(1, int(top // f0)) + 1)


def _wavetable(amplitudes: np.ndarray) -> np.ndarray:
    """One cycle of ``sum_k a_k sin(2 pi k t)`` at unit RMS, plus the first sample again at the end."""
    amplitudes = amplitudes / np.sqrt(0.5 * np.sum(np.square(amplitudes)))
    spectrum = np.zeros(_TABLE // 2 + 1, dtype=np.complex128)
    spectrum[1 : len(amplitudes) + 1] = -0.5j * _TABLE * amplitudes
    table = np.fft.irfft(spectrum, _TABLE).astype(np.float32)
    return np.append(table, table[:1])


def _oscillate(tables: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Read ``tables`` ``(..., _TABLE + 1)`` at phases ``cycles`` (in periods), interpolating."""
    position = (cycles % 1.0) * _TABLE
    index = position.astype(np.intp)
    fraction = (position - index).astype(np.float32)
    low = tables[..., index]
    return low + (tables[..., index + 1] - low) * fraction


def _constant_pitch(midi: float, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Phases of ``n`` samples of a steady note, from a random start."""
    return rng.random() + np.arange(n) * (float(_hz(midi)) / sample_rate)


def _envelope(
    n: int, sample_rate: int, attack: float, release: float, decay: float = np.inf
) -> np.ndarray:
    """Linear attack, exponential decay, linear release over the last ``release`` seconds."""
    t = np.arange(n, dtype=np.float32) / sample_rate
    env = np.minimum(t / attack, 1.0) * np.exp(-t / decay)
    tail = min(n, max(1, int(release * sample_rate)))
    env[n - tail :] *= np.linspace(1.0, 0.0, tail, dtype=np.float32)
    return env.astype(np.float32)


def _shaped_noise(
    rng: np.random.Generator, n: int, sample_rate: int, low: float, high: float
) -> np.ndarray:
    """White noise band-passed between ``low`` and ``high`` Hz in the spectrum, unit peak."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / sample_rate), 1.0)
    low = min(low, 0.3 * sample_rate)
    spectrum /= (1 + (low / f) ** 4) * (1 + (f / high) ** 4)
    noise = np.fft.irfft(spectrum, n)
    return (noise / np.abs(noise).max()).astype(np.float32)


def _place(
    out: np.ndarray, start: int, sound: np.ndarray, pan: float = 0.0, gain: float = 1.0
) -> None:
    """Add mono ``sound`` into stereo ``out`` from ``start``, constant-power panned, cut at the end."""
    end = min(out.shape[1], start + sound.shape[0])
    if end <= start:
        return
    angle = (pan + 1.0) * np.pi / 4
    gains = np.array([[np.cos(angle)], [np.sin(angle)]], dtype=np.float32) * np.float32(gain)
    out[:, start:end] += gains * sound[: end - start]


def _vocals(rng: np.random.Generator, song: _Song) -> np.ndarray:
    """A sung melody: a 1/k harmonic source through moving vowel formants, with vibrato and consonants.

    Each syllable glides in from the previous note and morphs from the previous vowel to its own:
    crossfading two wavetables on one phase is the same as moving every harmonic's amplitude
    linearly between the two vowels' formant envelopes.
    """
    sr = song.sample_rate
    out = np.zeros((2, song.length), dtype=np.float32)
    pan = rng.uniform(-0.15, 0.15)
    vibrato_rate, vibrato_depth = rng.uniform(5.0, 6.0), rng.uniform(0.3, 0.6)
    tilt = rng.uniform(0.8, 1.3)  # source roll-off exponent: darker or brighter voice
    consonant = _shaped_noise(rng, int(0.05 * sr), sr, 2500, 9000)
    consonant *= _envelope(consonant.size, sr, 0.005, 0.01, decay=0.012)

    def formant_table(midi: float, glide_from: float, vowel: int) -> np.ndarray:
        f0 = float(_hz(midi))
        k = _harmonics(float(_hz(max(midi, glide_from) + 1)), sr, 6000.0)
        f = k * f0
        resonance = _FORMANT_GAIN / (
            1 + ((f[:, None] - _VOWELS[vowel]) / (_FORMANT_BANDWIDTH / 2)) ** 2
        )
        return _wavetable((resonance.sum(axis=1) + 0.01) * k**-tilt)

    step, vowel, previous = int(rng.integers(5, 9)), int(rng.integers(len(_VOWELS))), None
    for phrase in range(0, int(np.ceil(song.beats)), 8):
        beat, end = float(phrase), phrase + 8 - int(rng.integers(1, 3))  # rest 1-2 beats per phrase
        while beat < end and beat < song.beats:
            length = min(float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0])), end - beat)
            step = int(np.clip(step + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]), 3, 11))
            if beat % 4 == 0:  # a chord tone on the downbeat
                tones = (song.chord(int(beat // 4))[:, None] + np.array([-7, 0, 7])).ravel()
                tones = tones[(tones >= 3) & (tones <= 11)]
                step = int(tones[np.argmin(np.abs(tones - step))])
            midi = float(song.midi(step, 48))
            glide_from = midi - 1.0 if previous is None else previous
            onset_vowel, vowel = vowel, int(rng.integers(len(_VOWELS)))

            n = song.at(beat + length) - song.at(beat) - int(0.03 * sr)
            t = np.arange(n, dtype=np.float32) / sr
            bend = (glide_from - midi) * np.exp(-t / 0.04)
            vibrato = vibrato_depth * np.minimum(t / 0.3, 1) * np.sin(2 * np.pi * vibrato_rate * t)
            cycles = np.cumsum(_hz(midi + bend + vibrato), dtype=np.float64) / sr
            tables = np.stack([formant_table(midi, glide_from, v) for v in (onset_vowel, vowel)])
            a, b = _oscillate(tables, cycles)
            morph = np.minimum(t / min(0.12, 0.4 * t[-1] + 1e-3), 1.0)
            morph = morph * morph * (3 - 2 * morph)  # smoothstep
            voice = (a + (b - a) * morph) * _envelope(
                n, sr, 0.03, 0.06, decay=rng.uniform(1.0, 3.0)
            )
            start = song.at(beat)
            _place(out, start, voice, pan)
            if rng.random() < 0.5:
                _place(out, start, consonant, pan, gain=rng.uniform(0.3, 0.6))
            previous, beat = midi, beat + length
        previous = None
    return out


def _drums(rng: np.random.Generator, song: _Song) -> np.ndarray:
    """Kick, snare and hi-hats from one synthesized sample each, on a 16-step pattern per track."""
    sr = song.sample_rate

    def time(seconds: float) -> np.ndarray:
        return np.arange(int(seconds * sr), dtype=np.float32) / sr

    t = time(0.4)
    sweep = rng.uniform(40, 60) + rng.uniform(60, 140) * np.exp(-t / rng.uniform(0.02, 0.05))
    kick = np.sin(2 * np.pi * np.cumsum(sweep, dtype=np.float64) / sr).astype(np.float32)
    kick *= np.exp(-t / rng.uniform(0.1, 0.25))
    t = time(0.3)
    snare = 0.5 * np.sin(2 * np.pi * rng.uniform(170, 240) * t) * np.exp(-t / 0.04)
    snare += _shaped_noise(rng, t.size, sr, 1200, 9000) * np.exp(-t / rng.uniform(0.05, 0.12))
    t = time(0.3)
    hat_noise = _shaped_noise(rng, t.size, sr, 7000, 16000)
    closed_hat = hat_noise * np.exp(-t / rng.uniform(0.012, 0.03))
    open_hat = hat_noise * np.exp(-t / rng.uniform(0.08, 0.15))

    kicks = {0, 8, *rng.choice([3, 6, 10, 11, 14], size=rng.integers(0, 3), replace=False).tolist()}
    hat_every = int(rng.choice([1, 2]))  # sixteenths or eighths
    open_step = 14 if rng.random() < 0.5 else None
    swing = rng.uniform(0.0, 0.15) if hat_every == 1 else 0.0
    snare_pan, hat_pan = rng.uniform(-0.15, 0.15), rng.uniform(-0.5, 0.5)
    snare_level, hat_level = rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.4)

    out = np.zeros((2, song.length), dtype=np.float32)
    for j in range(int(np.ceil(song.beats * 4))):
        s, bar = j % 16, j // 16
        start = max(0, song.at((j + swing * (s % 2)) / 4) + int(rng.normal(0, 0.002) * sr))
        if s in kicks:
            _place(out, start, kick, 0.0, rng.uniform(0.85, 1.0))
        fill = bar % 4 == 3 and s >= 12 and rng.random() < 0.6
        if s in (4, 12) or fill:
            _place(
                out, start, snare, snare_pan, snare_level * rng.uniform(0.7 if fill else 0.9, 1.0)
            )
        if s % hat_every == 0:
            accent = 1.0 if s % 4 == 0 else rng.uniform(0.5, 0.8)
            hat = open_hat if s == open_step else closed_hat
            _place(out, start, hat, hat_pan, hat_level * accent)
    return out


def _bass(rng: np.random.Generator, song: _Song) -> np.ndarray:
    """Chord roots (with fifths and octaves) in the lowest octaves, a low-passed saw/square mix."""
    sr = song.sample_rate
    rhythm = _BASS_RHYTHMS[rng.integers(len(_BASS_RHYTHMS))]
    rolloff, cutoff = rng.uniform(1.0, 2.0), rng.uniform(250, 1000)
    even = rng.uniform(0.2, 1.0)  # below 1 leans towards a square wave
    decay, pan = rng.uniform(0.2, 0.8), rng.uniform(-0.1, 0.1)
    out = np.zeros((2, song.length), dtype=np.float32)
    for bar in range(song.bars):
        root = 28 + (int(song.midi(song.chord(bar)[0], 0)) - 28) % 12  # E1 to D#2
        for begin, length, interval in rhythm:
            midi = root + interval
            f0 = float(_hz(midi))
            k = _harmonics(f0, sr, 4000.0)
            amplitudes = (
                k**-rolloff / (1 + (k * f0 / cutoff) ** 4) * np.where(k % 2 == 0, even, 1.0)
            )
            start = song.at(4 * bar + begin / 2)
            n = song.at(4 * bar + (begin + length) / 2) - start - int(0.01 * sr)
            note = _oscillate(_wavetable(amplitudes), _constant_pitch(midi, n, sr, rng))
            _place(out, start, note * _envelope(n, sr, 0.005, 0.02, decay), pan)
    return out


def _other(rng: np.random.Generator, song: _Song) -> np.ndarray:
    """Detuned stereo pads on the chord tones, and on most tracks a plucked arpeggio above them."""
    sr = song.sample_rate
    centre = int(rng.integers(58, 66))
    pad_rolloff, pad_attack = rng.uniform(1.2, 2.2), rng.uniform(0.05, 0.4)
    detune, width = rng.uniform(0.04, 0.12), rng.uniform(0.3, 0.8)  # semitones; stereo spread
    arpeggio = rng.random() < 0.6
    arp_step = float(rng.choice([0.25, 0.5]))  # beats per note
    arp_decay, arp_pan = rng.uniform(0.08, 0.25), rng.uniform(-0.6, 0.6)
    arp_cutoff = rng.uniform(2000, 5000)

    out = np.zeros((2, song.length), dtype=np.float32)
    for bar in range(song.bars):
        pitch_classes = song.midi(song.chord(bar), 0) % 12
        voicing = np.sort(centre - 6 + (pitch_classes - (centre - 6)) % 12)
        start = song.at(4 * bar)
        n = song.at(4 * bar + 4) - start + int(0.3 * sr)  # release into the next bar
        env = _envelope(n, sr, pad_attack, 0.3)
        for midi in voicing:
            k = _harmonics(float(_hz(midi + 1)), sr, 5000.0)
            table = _wavetable(k**-pad_rolloff * rng.uniform(0.5, 1.0, k.size))
            for side in (-1, 1):
                tone = _oscillate(table, _constant_pitch(midi + side * detune, n, sr, rng))
                _place(out, start, tone * env, side * width, 0.5)
        if not arpeggio:
            continue
        notes = np.concatenate([voicing + 12, voicing[::-1][1:-1] + 12])  # up and down
        for i, beat in enumerate(np.arange(4 * bar, 4 * bar + 4, arp_step)):
            midi = float(notes[i % notes.size])
            f0 = float(_hz(midi))
            k = _harmonics(f0, sr, 8000.0)
            a = _wavetable(k**-1.0 / (1 + (k * f0 / arp_cutoff) ** 2))
            n = song.at(beat + 2 * arp_step) - song.at(beat)
            note = _oscillate(a, _constant_pitch(midi, n, sr, rng))
            _place(
                out, song.at(beat), note * _envelope(n, sr, 0.003, 0.02, arp_decay), arp_pan, 0.4
            )
    return out
