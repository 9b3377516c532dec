import contextlib
import io
import re
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from test_audio_convert import address_space_cap

from auralflow_dist import storage
from auralflow_dist.audio import info, read, write
from auralflow_dist.audio.io import _check_claim, open_audio, promised_frames
from auralflow_dist.errors import AudioError, ConfigError

SR = 16000


def tone(channels: int = 2, frames: int = SR, peak: float = 0.5) -> np.ndarray:
    """Distinct sines per channel, so channel order and offsets are checkable."""
    t = np.arange(frames) / SR
    return np.stack([peak * np.sin(2 * np.pi * 220 * (c + 1) * t) for c in range(channels)]).astype(
        np.float32
    )


def aligned_correlation(decoded: np.ndarray, reference: np.ndarray, max_lag: int = 1200) -> float:
    """Best correlation of the reference's middle half with the decoded audio at any codec delay."""
    n = reference.shape[1]
    ref = reference[:, n // 4 : 3 * n // 4]
    best = 0.0
    for lag in range(-max_lag, max_lag + 1):
        seg = decoded[:, n // 4 + lag : 3 * n // 4 + lag]
        if seg.shape == ref.shape:
            corr = np.dot(seg.ravel(), ref.ravel()) / np.linalg.norm(seg) / np.linalg.norm(ref)
            best = max(best, float(corr))
    return best


@pytest.mark.parametrize(
    ("name", "subtype", "atol"),
    [
        ("a.wav", "PCM_16", 1e-4),
        ("a.wav", "PCM_24", 1e-6),
        ("a.wav", "FLOAT", 0.0),
        ("a.flac", "PCM_16", 1e-4),
        ("a.flac", "PCM_24", 1e-6),
    ],
)
def test_lossless_formats_round_trip(tmp_path, name, subtype, atol):
    x = tone()
    path = str(tmp_path / name)
    sf.write(path, x.T, SR, subtype=subtype)
    audio, sr = read(path)
    assert sr == SR and audio.dtype == np.float32 and audio.shape == x.shape
    assert audio.flags.c_contiguous
    np.testing.assert_allclose(audio, x, atol=atol)
    meta = info(f"file://{path}")
    assert (meta.frames, meta.sample_rate, meta.channels, meta.subtype) == (SR, SR, 2, subtype)
    assert meta.duration == pytest.approx(1.0)


@pytest.mark.parametrize(("name", "fmt"), [("a.ogg", "OGG"), ("a.mp3", "MP3")])
def test_lossy_formats_decode(tmp_path, name, fmt):
    sr = 44100  # the MP3 encoder's native rate
    t = np.arange(sr) / sr
    x = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)])
    path = str(tmp_path / name)
    sf.write(path, x.T.astype(np.float32), sr)
    meta = info(path)
    assert (meta.format, meta.sample_rate, meta.channels) == (fmt, sr, 2)
    audio, rate = read(path)
    assert rate == sr and audio.shape[0] == 2
    assert abs(audio.shape[1] - sr) < 0.05 * sr
    assert aligned_correlation(audio, x) > 0.99


def test_partial_read_matches_slice(tmp_path):
    x = tone(frames=5000)
    path = str(tmp_path / "a.flac")
    sf.write(path, x.T, SR, subtype="PCM_24")
    full, _ = read(path)
    part, _ = read(path, offset=1234, frames=777)
    np.testing.assert_array_equal(part, full[:, 1234 : 1234 + 777])
    tail, _ = read(path, offset=4900, frames=300)
    np.testing.assert_array_equal(tail, full[:, 4900:])
    padded, _ = read(path, offset=4900, frames=300, fill_value=0.0)
    assert padded.shape == (2, 300) and not padded[:, 100:].any()
    rest, _ = read(path, offset=4000)
    np.testing.assert_array_equal(rest, full[:, 4000:])


def test_read_mono_and_int16(tmp_path):
    x = tone(channels=1)
    path = str(tmp_path / "m.wav")
    sf.write(path, x[0], SR, subtype="PCM_16")
    audio, _ = read(path)
    assert audio.shape == (1, SR)
    flat, _ = read(path, always_2d=False)
    assert flat.shape == (SR,)
    ints, _ = read(path, dtype="int16")
    assert ints.dtype == np.int16 and ints.shape == (1, SR)


def test_read_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "text.wav"
    text.write_bytes(b"this is not a RIFF file at all, just text" * 10)
    m4a = tmp_path / "song.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00" + bytes(200))
    silent = str(tmp_path / "zero.wav")
    sf.write(silent, np.zeros((0, 2), np.float32), SR)
    for path in (missing, str(empty), str(text), str(m4a), silent):
        with pytest.raises(AudioError, match=re.escape(path)):
            read(path)
    with pytest.raises(AudioError, match="empty"):
        read(str(empty))
    with pytest.raises(AudioError, match=re.escape(missing)):
        info(missing)
    assert info(silent).frames == 0


def test_read_offset_outside_file(tmp_path):
    path = str(tmp_path / "a.wav")
    sf.write(path, tone(frames=100).T, SR)
    for offset in (100, 1000, -1):
        with pytest.raises(AudioError, match="offset"):
            read(path, offset=offset)


def test_read_returns_non_finite_samples_as_they_are(tmp_path):
    x = tone(frames=100)
    x[0, 3], x[1, 7] = np.nan, np.inf
    path = str(tmp_path / "f.wav")
    sf.write(path, x.T, SR, subtype="FLOAT")
    audio, _ = read(path)
    assert np.isnan(audio[0, 3]) and np.isinf(audio[1, 7])


@pytest.mark.parametrize("name", ["o.wav", "o.flac", "o.ogg", "o.mp3"])
def test_write_infers_format_and_reads_back(tmp_path, name):
    x = tone(frames=SR)
    path = str(tmp_path / "sub" / name)
    assert write(path, torch.from_numpy(x), SR) == 1.0
    meta = info(path)
    assert meta.format == name.split(".")[1].upper()
    assert (meta.channels, meta.sample_rate) == (2, SR)
    audio, _ = read(path)
    if name.endswith((".wav", ".flac")):
        np.testing.assert_allclose(audio, x, atol=1e-4)
    assert not list((tmp_path / "sub").glob("*.tmp-*"))


def test_write_limits_clips_or_refuses_overshoot(tmp_path):
    x = tone(frames=1000, peak=1.25)
    path = str(tmp_path / "loud.wav")
    gain = write(path, x, SR)
    assert gain == pytest.approx(0.8, rel=1e-5)
    audio, _ = read(path)
    assert np.abs(audio).max() == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(audio, x * gain, atol=1e-4)

    assert write(path, x, SR, clip="clip") == 1.0
    audio, _ = read(path)
    np.testing.assert_allclose(audio, np.clip(x, -1, 1), atol=1e-4)

    with pytest.raises(AudioError, match=r"peak 1\.25"):
        write(path, x, SR, clip="error")
    with pytest.raises(ConfigError, match="clip"):
        write(path, x, SR, clip="wrap")

    float_path = str(tmp_path / "loud_float.wav")
    assert write(float_path, x, SR, subtype="FLOAT", clip="error") == 1.0
    np.testing.assert_array_equal(read(float_path)[0], x)


def test_write_rejects_bad_input(tmp_path):
    x = tone(frames=100)
    with pytest.raises(AudioError, match="extension"):
        write(str(tmp_path / "a.xyz"), x, SR)
    with pytest.raises(AudioError, match="unknown audio format XYZ"):
        write(str(tmp_path / "a.wav"), x, SR, format="xyz")
    with pytest.raises(AudioError, match="subtype"):
        write(str(tmp_path / "a.ogg"), x, SR, subtype="PCM_24")
    with pytest.raises(AudioError, match="shape"):
        write(str(tmp_path / "a.wav"), np.zeros((2, 0), np.float32), SR)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        write(str(tmp_path / "a.wav"), bad, SR)
    raw = str(tmp_path / "a.bin")
    write(raw, x[:1], SR, format="wav")
    assert info(raw).channels == 1


# ------------------------------------------------------------------------------------------------
# Headers that promise more than the file holds (issue 16)


def flac_claiming(path, frames: int) -> np.ndarray:
    """A 3 s mono FLAC whose STREAMINFO says it holds ``frames`` frames; returns its samples."""
    x = tone(channels=1, frames=3 * SR)
    sf.write(path, x.T, SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    # Bytes 18..25: 20 bits of rate, 3 of channels, 5 of bits per sample, 36 of total samples.
    (packed,) = struct.unpack(">Q", data[18:26])
    data[18:26] = struct.pack(">Q", packed >> 36 << 36 | frames)
    path.write_bytes(bytes(data))
    return x


def test_a_header_claiming_more_frames_than_the_file_can_hold_is_refused(tmp_path):
    path = str(tmp_path / "forged.flac")
    x = flac_claiming(
        tmp_path / "forged.flac", 2**35
    )  # 128 GiB of float32 if allocated by the header
    assert info(path).frames == 2**35
    with address_space_cap(1 << 30):
        for frames, fill in ((-1, None), (2**35, 0.0)):  # `auralflow test` reads the latter
            with pytest.raises(AudioError, match=re.escape(path)) as err:
                read(path, frames=frames, fill_value=fill)
            assert "header claims 34359738368 frames" in str(err.value)
            assert "bytes can hold" in str(err.value)
        # A short read allocates little whatever the header says, and gets the real samples.
        head, _ = read(path, frames=1000)
    np.testing.assert_allclose(head, x[:, :1000], atol=1e-4)


def test_a_wav_whose_data_size_is_patched_reads_what_the_file_holds(tmp_path):
    path = tmp_path / "patched.wav"
    x = tone(channels=2, frames=3 * SR)
    sf.write(path, x.T, SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at : at + 4] = struct.pack("<I", 2**31 - 1)  # 2**31 bytes of samples promised
    path.write_bytes(bytes(data))
    with address_space_cap(1 << 30):
        audio, _ = read(str(path))
        padded, _ = read(str(path), frames=3 * SR + 10, fill_value=0.0)
    np.testing.assert_allclose(audio, x, atol=1e-4)
    assert padded.shape == (2, 3 * SR + 10)


def fake(format: str, subtype: str, frames: int, channels: int = 2):
    return SimpleNamespace(
        format=format, subtype=subtype, frames=frames, channels=channels, samplerate=SR
    )


def test_the_size_bound_is_exact_for_fixed_width_samples_and_loose_for_codecs(tmp_path):
    path = tmp_path / "sized.bin"
    with path.open("wb") as f:
        f.truncate(2**26)  # 64 MiB, sparse
    url = str(path)
    _check_claim(url, fake("WAV", "PCM_16", 2**24), 2**24)  # 64 MiB of 16-bit stereo
    _check_claim(url, fake("WAV", "PCM_16", 2**30), 10)  # only what is read counts
    with pytest.raises(AudioError, match="header claims 16777217 frames"):
        _check_claim(url, fake("WAV", "PCM_16", 2**24 + 1), 2**24 + 1)
    with pytest.raises(AudioError, match="header claims"):
        _check_claim(url, fake("WAV", "FLOAT", 2**24), 2**24)
    # FLAC names its samples PCM_16 too, but digital silence packs ~550 samples a byte.
    _check_claim(url, fake("FLAC", "PCM_16", 2**30), 2**30)
    _check_claim(url, fake("OGG", "VORBIS", 2**30), 2**30)
    with pytest.raises(AudioError, match="header claims"):
        _check_claim(url, fake("FLAC", "PCM_16", 2**41), 2**41)


def test_promised_frames_see_a_cut_wav_or_aiff_but_not_a_stream_header(tmp_path):
    x = tone(channels=1, frames=3 * SR)
    for fmt in ("WAV", "AIFF"):
        path = tmp_path / f"cut.{fmt.lower()}"
        sf.write(path, x.T, SR, format=fmt, subtype="PCM_16")
        with sf.SoundFile(path) as snd:
            assert promised_frames(snd) == snd.frames == 3 * SR
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with sf.SoundFile(path) as snd:
            assert snd.frames < 1.6 * SR  # libsndfile counts what is left
            assert promised_frames(snd) == pytest.approx(3 * SR, abs=10)
    # A writer that did not know the length yet (a pipe) puts 0xFFFFFFFF: not a promise.
    path = tmp_path / "stream.wav"
    sf.write(path, x.T, SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[4:8] = data[at : at + 4] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    with sf.SoundFile(path) as snd:
        assert promised_frames(snd) == snd.frames == 3 * SR


def test_a_remote_read_that_fails_mid_file_is_reported_as_itself(monkeypatch):
    """libsndfile's callbacks swallow the error: a dropped connection used to read as
    'Format not recognised' or as a file that ends early."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros((48000, 2), dtype="float32"), 8000, format="WAV", subtype="PCM_16")
    url = "memory://drops/song.wav"
    storage.write_bytes(url, buf.getvalue())
    real = storage.open_file

    class Drops:
        def __init__(self, file, reads_left):
            self.file, self.reads_left = file, reads_left

        def read(self, size=-1):
            self.reads_left -= 1
            if self.reads_left < 0:
                raise ConnectionError("Connection reset by peer")
            return self.file.read(size)

        def __getattr__(self, name):
            return getattr(self.file, name)

    for reads_left in (0, 3):  # in the header, then mid-data

        @contextlib.contextmanager
        def dropping(u, mode="rb", reads_left=reads_left):
            with real(u, mode) as f:
                yield Drops(f, reads_left)

        monkeypatch.setattr(storage, "open_file", dropping)
        failed = r"read failed \(ConnectionError: Connection reset"
        with pytest.raises(AudioError, match=failed), open_audio(url) as snd:
            snd.read(dtype="float32")
