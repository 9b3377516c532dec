"""Layers shared by the mask networks: U-Net stages, per-bin normalisation, mask activations.

Shapes follow the project convention: spectrograms are ``(batch, channels, freq_bins, frames)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from auralflow_dist.errors import ConfigError


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters, trainable or not (what model-size tables report)."""
    return sum(p.numel() for p in module.parameters())


def check_spectrogram(x: torch.Tensor, num_channels: int, num_fft_bins: int) -> None:
    """Fail early on a spectrogram the network was not built for, instead of deep inside a layer."""
    if x.dim() != 4 or x.shape[1] != num_channels or x.shape[2] != num_fft_bins:
        raise ValueError(
            f"expected a spectrogram of shape (batch, {num_channels}, {num_fft_bins}, frames), "
            f"got {tuple(x.shape)}"
        )


def run_recurrent(lstm: nn.LSTM, seq: torch.Tensor) -> torch.Tensor:
    """The LSTM's output sequence; on the CPU always computed in float32.

    CPU autocast runs LSTMs in bf16, which oneDNN implements only on CPUs with AVX-512: an
    AVX2-only CPU (AMD EPYC before Zen 4, many Intel desktops) raises "could not create a
    primitive descriptor for the LSTM forward propagation primitive". Float32 behaves the same on
    every x86-64 CPU; the convolutions around it keep autocast's bf16. CUDA keeps autocast's choice.
    """
    if seq.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return lstm(seq.float())[0]
    return lstm(seq)[0]


def activation(leak_factor: float) -> nn.Module:
    """SELU keeps activations self-normalising; a positive leak asks for LeakyReLU instead."""
    return nn.LeakyReLU(leak_factor) if leak_factor > 0 else nn.SELU()


class ConvBlock(nn.Sequential):
    """3x3 same-size convolution, activation, then batch norm (the order Auralflow used)."""

    def __init__(self, in_channels: int, out_channels: int, leak_factor: float = 0.0) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            activation(leak_factor),
            nn.BatchNorm2d(out_channels),
        )


class TripleConv(nn.Sequential):
    """Three stacked ConvBlocks: one U-Net stage's worth of features at a fixed resolution."""

    def __init__(self, in_channels: int, out_channels: int, leak_factor: float = 0.0) -> None:
        super().__init__(
            ConvBlock(in_channels, out_channels, leak_factor),
            ConvBlock(out_channels, out_channels, leak_factor),
            ConvBlock(out_channels, out_channels, leak_factor),
        )


class DownBlock(nn.Module):
    """Encoder stage: features at this resolution (kept as the skip), then a 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, leak_factor: float = 0.0) -> None:
        super().__init__()
        self.conv = TripleConv(in_channels, out_channels, leak_factor)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.conv(x)
        return self.pool(skip), skip


class UpBlock(nn.Module):
    """Decoder stage: upsample to the skip's size, join the skip, refine, optionally drop out.

    Input has ``in_channels``; the transposed conv halves it to ``out_channels`` so that after
    concatenating the skip (``out_channels`` too) the triple conv again sees ``in_channels``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, leak_factor: float = 0.0, dropout_p: float = 0.0
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=5, stride=2, padding=2)
        self.norm = nn.BatchNorm2d(out_channels)
        self.conv = TripleConv(2 * out_channels, out_channels, leak_factor)
        self.dropout = nn.Dropout2d(dropout_p) if dropout_p > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.up(x, output_size=skip.shape[-2:]))
        return self.dropout(self.conv(torch.cat([x, skip], dim=1)))


class FrequencyNorm(nn.Module):
    """Learnable ``(x - center) * scale`` per frequency bin.

    Statistics differ wildly between low and high bins, so each bin gets its own affine map; it
    is shared over channels and frames, so it never depends on the clip length.
    """

    def __init__(self, num_fft_bins: int) -> None:
        super().__init__()
        self.center = nn.Parameter(torch.zeros(num_fft_bins, 1))
        self.scale = nn.Parameter(torch.ones(num_fft_bins, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) * self.scale


def mask_activation(name: str, leak_factor: float = 0.0) -> nn.Module:
    """The layer that turns logits into a soft mask in [0, 1].

    - ``sigmoid``: (0, 1) as is.
    - ``softmax``: the two-way softmax over {target, everything else} with the second logit fixed
      at 0, which is exactly the sigmoid. A softmax over channels is constant for mono and one over
      frequency forces each frame's mask to sum to 1 (a useless mask), so this is the only
      single-target reading that makes sense; the name is kept for config compatibility.
    - ``relu``, ``tanh``, ``leaky_relu`` (slope ``leak_factor``): clamped to [0, 1] afterwards, as
      Auralflow did, so a mask never flips the sign of a magnitude or boosts it past the mixture.
      The clamp makes leaky_relu equal relu (values and gradients); ``leak_factor`` still shapes the
      hidden layers (see ``activation``).
    """
    unit = nn.Hardtanh(0.0, 1.0)
    layers = {
        "sigmoid": nn.Sigmoid,
        "softmax": nn.Sigmoid,
        "relu": lambda: unit,
        "tanh": lambda: nn.Sequential(nn.Tanh(), unit),
        "leaky_relu": lambda: nn.Sequential(nn.LeakyReLU(leak_factor), unit),
    }
    if name not in layers:
        raise ConfigError(
            "mask_act_fn", f"unknown activation {name!r} (choose from {', '.join(layers)})"
        )
    return layers[name]()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last two axes (frequency, time) at their far end up to a multiple.

    Zero rather than reflect padding: reflection is impossible for a one-frame clip, and zero
    magnitude is silence, which the network sees at the band edges anyway.
    """
    pad_f = -x.shape[-2] % multiple
    pad_t = -x.shape[-1] % multiple
    return F.pad(x, (0, pad_t, 0, pad_f)) if pad_f or pad_t else x
