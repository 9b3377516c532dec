"""The mask-inference network of the nussl source-separation tutorial.

Magnitude -> decibels -> per-bin batch norm -> bidirectional LSTM stack over time -> linear ->
mask. A small, well-understood baseline beside the U-Nets, with the same input/output contract.
"""

from __future__ import annotations

import torch
from torch import nn

from auralflow_dist.models.blocks import check_spectrogram, mask_activation, run_recurrent

POWER_FLOOR = 1e-8  # -80 dB: silence (and zero padding) maps to a finite value


class MaskInference(nn.Module):
    """BLSTM mask estimator on log-magnitude frames.

    Decibels rather than log1p: log1p is nearly linear below 1, so quiet passages (magnitudes of
    1e-3) would all look like silence, while decibels keep their relative level. Batch norm per
    frequency bin (and channel) learns the centring and scale; like everything here it does not
    depend on the number of frames, which ``num_frames`` records but never restricts.
    """

    def __init__(
        self,
        num_fft_bins: int,
        num_frames: int | None = None,
        num_channels: int = 1,
        hidden_size: int = 300,
        num_layers: int = 2,
        dropout_p: float = 0.3,
        mask_act_fn: str = "sigmoid",
        leak_factor: float = 0.0,
        bidirectional: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.num_fft_bins = num_fft_bins
        self.num_frames = num_frames
        self.num_channels = num_channels
        features = num_fft_bins * num_channels
        self.norm = nn.BatchNorm1d(features)
        self.lstm = nn.LSTM(
            features,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout_p if num_layers > 1 else 0.0,  # LSTM dropout acts between layers only
        )
        self.project = nn.Linear(hidden_size * (2 if bidirectional else 1), features)
        self.mask_act = mask_activation(mask_act_fn, leak_factor)
        if device is not None:
            self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spectrogram(x, self.num_channels, self.num_fft_bins)
        batch, channels, bins, frames = x.shape
        decibels = 10 * torch.log10(x.float().square() + POWER_FLOOR)
        frames_first = self.norm(decibels.reshape(batch, channels * bins, frames)).transpose(1, 2)
        mask = self.mask_act(self.project(run_recurrent(self.lstm, frames_first)))
        return mask.transpose(1, 2).reshape(batch, channels, bins, frames)
