"""The three Auralflow U-Nets: conv, LSTM and VAE+LSTM bottlenecks between one encoder/decoder.

Each maps a magnitude spectrogram ``(batch, channels, freq_bins, frames)`` to a soft mask of the
same shape. Inputs of any size are zero-padded to a multiple of 32 (five 2x2 poolings) and the
output is cropped back, so ``num_frames`` is recorded for the config but never restricts input:
nothing the networks learn depends on the clip length.
"""

from __future__ import annotations

import torch
from torch import nn

from auralflow_dist.errors import ConfigError
from auralflow_dist.models.blocks import (
    DownBlock,
    FrequencyNorm,
    TripleConv,
    UpBlock,
    check_spectrogram,
    mask_activation,
    pad_to_multiple,
    run_recurrent,
)

DEPTH = 5
PAD_MULTIPLE = 2**DEPTH
DROPOUT_STAGES = 3  # the deepest decoder stages, where the features are most redundant


class SpectrogramNetSimple(nn.Module):
    """U-Net mask estimator: 5 down stages (h..16h channels), a conv bottleneck (32h), 5 up stages.

    Subclasses swap the bottleneck by overriding ``_make_bottleneck``; nothing else is built for
    them, so every parameter takes part in the forward pass.
    """

    def __init__(
        self,
        num_fft_bins: int,
        num_frames: int | None,
        num_channels: int = 1,
        hidden_channels: int = 16,
        mask_act_fn: str = "sigmoid",
        leak_factor: float = 0.0,
        dropout_p: float = 0.5,
        normalize_input: bool = False,
        normalize_output: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.num_fft_bins = num_fft_bins
        self.num_frames = num_frames
        self.num_channels = num_channels
        widths = [num_channels] + [hidden_channels * 2**i for i in range(DEPTH + 1)]
        self.input_norm = FrequencyNorm(num_fft_bins) if normalize_input else nn.Identity()
        self.encoder = nn.ModuleList(
            DownBlock(widths[i], widths[i + 1], leak_factor) for i in range(DEPTH)
        )
        padded_bins = -(-num_fft_bins // PAD_MULTIPLE)  # frequency rows left at the bottleneck
        self.bottleneck = self._make_bottleneck(widths[-2], widths[-1], padded_bins, leak_factor)
        self.decoder = nn.ModuleList(
            UpBlock(
                widths[i + 1],
                widths[i],
                leak_factor,
                dropout_p if i > DEPTH - DROPOUT_STAGES else 0.0,
            )
            for i in range(DEPTH, 0, -1)
        )
        self.head = nn.Sequential(
            nn.Conv2d(hidden_channels, num_channels, kernel_size=1), nn.BatchNorm2d(num_channels)
        )
        self.output_norm = FrequencyNorm(num_fft_bins) if normalize_output else nn.Identity()
        self.mask_act = mask_activation(mask_act_fn, leak_factor)
        if device is not None:
            self.to(device)

    def _make_bottleneck(
        self, in_channels: int, out_channels: int, bins: int, leak_factor: float
    ) -> nn.Module:
        """Maps ``(B, in_channels, bins, T')`` to ``(B, out_channels, bins, T')``."""
        return TripleConv(in_channels, out_channels, leak_factor)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        check_spectrogram(x, self.num_channels, self.num_fft_bins)
        x = pad_to_multiple(self.input_norm(x), PAD_MULTIPLE)
        skips = []
        for block in self.encoder:
            x, skip = block(x)
            skips.append(skip)
        return x, skips

    def _decode(self, x: torch.Tensor, skips: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = block(x, skip)
        # Crop before the 1x1 head so its batch norm sees only real bins and frames.
        x = self.head(x[..., : size[-2], : size[-1]])
        return self.mask_act(self.output_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottom, skips = self._encode(x)
        return self._decode(self.bottleneck(bottom), skips, x.shape)


class RecurrentBottleneck(nn.Module):
    """Bidirectional LSTM stack over time (``input_axis=1``) or over frequency (``input_axis=0``).

    Time: each frame is one step whose features are all channels x bottleneck bins, so the size
    depends on ``num_fft_bins`` only. Frequency: each bottleneck bin is one step with the
    channels as features, and frames are folded into the batch. Either way a batch item never
    sees another, and ``variational`` puts a Gaussian latent (mu, log-variance) before the LSTM.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bins: int,
        recurrent_depth: int,
        hidden_size: int,
        input_axis: int,
        variational: bool,
    ) -> None:
        super().__init__()
        if input_axis not in (0, 1):
            raise ConfigError("input_axis", f"must be 0 (frequency) or 1 (time), got {input_axis}")
        self.input_axis = input_axis
        features = in_channels * bins if input_axis == 1 else in_channels
        out_features = out_channels * bins if input_axis == 1 else out_channels
        hidden = min(hidden_size, out_channels)
        self.mu = nn.Linear(features, features) if variational else None
        self.log_var = nn.Linear(features, features) if variational else None
        self.lstm = nn.LSTM(features, hidden, recurrent_depth, batch_first=True, bidirectional=True)
        self.project = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.SELU(), nn.Linear(hidden, out_features), nn.SELU()
        )

    def forward_with_latent(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Bottleneck output, plus the latent's mean and log-variance when variational."""
        batch, _, bins, frames = x.shape
        steps = x.permute(0, 3, 2, 1)  # (B, T', F', C)
        if self.input_axis == 1:
            seq = steps.reshape(batch, frames, -1)
        else:
            seq = steps.reshape(batch * frames, bins, -1)
        mu = log_var = None
        if self.mu is not None and self.log_var is not None:
            mu, log_var = self.mu(seq), self.log_var(seq)
            # Sample only while training: inference decodes the mean, so it is deterministic.
            seq = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu) if self.training else mu
        out = self.project(run_recurrent(self.lstm, seq))
        out = out.reshape(batch, frames, bins, -1).permute(0, 3, 2, 1)
        return out, mu, log_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_latent(x)[0]


class SpectrogramNetLSTM(SpectrogramNetSimple):
    """U-Net whose bottleneck is a stack of bidirectional LSTMs instead of convolutions.

    ``hidden_size`` is a cap: the LSTM width is ``min(hidden_size, 32 * hidden_channels)``.
    """

    variational = False

    def __init__(
        self,
        *args: object,
        recurrent_depth: int = 3,
        hidden_size: int = 1024,
        input_axis: int = 1,
        **kwargs: object,
    ) -> None:
        # Plain attributes may be set before nn.Module.__init__; the base constructor reads them
        # when it builds the bottleneck, so no throwaway conv bottleneck is ever created.
        self.recurrent_depth = recurrent_depth
        self.hidden_size = hidden_size
        self.input_axis = input_axis
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _make_bottleneck(
        self, in_channels: int, out_channels: int, bins: int, leak_factor: float
    ) -> nn.Module:
        return RecurrentBottleneck(
            in_channels,
            out_channels,
            bins,
            self.recurrent_depth,
            self.hidden_size,
            self.input_axis,
            self.variational,
        )


class SpectrogramNetVAE(SpectrogramNetLSTM):
    """LSTM U-Net with a Gaussian latent z ~ N(mu, exp(log_var)) feeding the LSTM.

    ``forward(x)`` returns the mask like the other networks; ``forward(x, return_latent=True)``
    also returns mu and log_var for the KL term. Going through ``forward`` (not a side method)
    keeps DDP's gradient hooks in the path.
    """

    variational = True

    def forward(
        self, x: torch.Tensor, return_latent: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bottom, skips = self._encode(x)
        features, mu, log_var = self.bottleneck.forward_with_latent(bottom)
        mask = self._decode(features, skips, x.shape)
        return (mask, mu, log_var) if return_latent else mask
