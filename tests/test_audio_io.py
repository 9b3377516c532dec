import re

import numpy as np
import pytest
import soundfile as sf
import torch

from auralflow_dist.audio import info, read, write
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
