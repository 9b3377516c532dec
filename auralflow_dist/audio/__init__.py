"""Audio in and out (soundfile over fsspec), rate/channel conversion, the STFT, long-audio windowing."""

from auralflow_dist.audio.convert import resample, to_channels
from auralflow_dist.audio.io import AudioInfo, info, read, sanitize, write
from auralflow_dist.audio.stft import STFT, apply_mask, from_magnitude_phase, magnitude, phase
from auralflow_dist.audio.windowing import frame_signal, overlap_add

__all__ = [
    "STFT",
    "AudioInfo",
    "apply_mask",
    "frame_signal",
    "from_magnitude_phase",
    "info",
    "magnitude",
    "overlap_add",
    "phase",
    "read",
    "resample",
    "sanitize",
    "to_channels",
    "write",
]
