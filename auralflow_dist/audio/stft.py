"""The STFT/iSTFT pair every spectrogram model wraps, run on the worker's device.

The transform is centred (frames are aligned to ``t * hop_length``) with a periodic Hann window, so
``inverse(forward(x), len(x))`` reconstructs ``x`` to float precision.
"""

from __future__ import annotations

import torch
from torch import nn

from auralflow_dist.errors import ConfigError

# FFTs run in float32 at least: bf16 has no FFT kernels, and fp16 loses the phase detail masks need.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class STFT(nn.Module):
    """Complex spectrogram ``(..., num_fft // 2 + 1, frames)`` of audio ``(..., samples)``."""

    def __init__(self, num_fft: int = 1024, window_size: int = 1024, hop_length: int = 512) -> None:
        super().__init__()
        if num_fft < 1:
            raise ConfigError("num_fft", f"must be positive, not {num_fft}")
        if not 1 <= window_size <= num_fft:
            raise ConfigError(
                "window_size", f"must be in [1, num_fft={num_fft}], not {window_size}"
            )
        if not 1 <= hop_length <= window_size:
            raise ConfigError(
                "hop_length", f"must be in [1, window_size={window_size}], not {hop_length}"
            )
        self.num_fft = num_fft
        self.window_size = window_size
        self.hop_length = hop_length
        self.num_bins = num_fft // 2 + 1
        # A plain dict, not a buffer: nothing to save in checkpoints or to move with .to(); each
        # device and precision gets its window once.
        self._windows: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def window(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (torch.device(device), dtype)
        if key not in self._windows:
            self._windows[key] = torch.hann_window(
                self.window_size, periodic=True, device=device, dtype=dtype
            )
        return self._windows[key]

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        lead, samples = audio.shape[:-1], audio.shape[-1]
        if audio.dtype in _LOW_PRECISION:
            audio = audio.float()
        # Reflect padding needs more samples than it pads; very short clips are zero padded.
        pad_mode = "reflect" if samples > self.num_fft // 2 else "constant"
        with torch.autocast(audio.device.type, enabled=False):
            spec = torch.stft(
                audio.reshape(-1, samples),
                n_fft=self.num_fft,
                hop_length=self.hop_length,
                win_length=self.window_size,
                window=self.window(audio.device, audio.dtype),
                center=True,
                pad_mode=pad_mode,
                return_complex=True,
            )
        return spec.reshape(*lead, *spec.shape[-2:])

    def inverse(self, spec: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Audio ``(..., length)`` from a spectrogram ``(..., freq, frames)``."""
        if spec.dtype == torch.complex32:
            spec = spec.to(torch.complex64)
        lead = spec.shape[:-2]
        with torch.autocast(spec.device.type, enabled=False):
            audio = torch.istft(
                spec.reshape(-1, *spec.shape[-2:]),
                n_fft=self.num_fft,
                hop_length=self.hop_length,
                win_length=self.window_size,
                window=self.window(spec.device, spec.real.dtype),
                center=True,
                length=length,
            )
        return audio.reshape(*lead, audio.shape[-1])
