"""Audio in and out (soundfile over fsspec), rate/channel conversion, the STFT, long-audio windowing."""

from auralflow_dist.audio.convert import resample, resampling_context, to_channels
from auralflow_dist.audio.io import AudioInfo, info, read, write
from auralflow_dist.audio.stft import STFT
from auralflow_dist.audio.windowing import frame_signal, overlap_add

__all__ = [
    "STFT",
    "AudioInfo",
    "frame_signal",
    "info",
    "overlap_add",
    "read",
    "resample",
    "resampling_context",
    "to_channels",
    "write",
]
