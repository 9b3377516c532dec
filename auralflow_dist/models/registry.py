"""Model name -> network class: the network a ``ModelConfig`` describes.

Where a model lives on storage (``model.json``, ``weights.pt``) is `auralflow_dist.session`'s.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from auralflow_dist.config import ModelConfig
from auralflow_dist.models.blstm import MaskInference
from auralflow_dist.models.unet import SpectrogramNetLSTM, SpectrogramNetSimple, SpectrogramNetVAE

NETWORKS: dict[str, type[nn.Module]] = {
    "SpectrogramNetSimple": SpectrogramNetSimple,
    "SpectrogramNetLSTM": SpectrogramNetLSTM,
    "SpectrogramNetVAE": SpectrogramNetVAE,
    "MaskInference": MaskInference,
}


def build_network(config: ModelConfig) -> nn.Module:
    """The network a config describes, with freshly initialised weights."""
    common: dict[str, Any] = {
        "num_fft_bins": config.num_fft_bins,
        "num_frames": config.num_frames,
        "num_channels": config.num_channels,
        "mask_act_fn": config.mask_act_fn,
        "leak_factor": config.leak_factor,
        "dropout_p": config.dropout_p,
    }
    if config.model_type == "MaskInference":
        return MaskInference(
            **common, hidden_size=config.hidden_size, num_layers=config.recurrent_depth
        )
    common.update(
        hidden_channels=config.hidden_channels,
        normalize_input=config.normalize_input,
        normalize_output=config.normalize_output,
    )
    if config.model_type == "SpectrogramNetSimple":
        return SpectrogramNetSimple(**common)
    return NETWORKS[config.model_type](
        **common,
        recurrent_depth=config.recurrent_depth,
        hidden_size=config.hidden_size,
        input_axis=config.input_axis,
    )


def unwrap(network: nn.Module) -> nn.Module:
    """The bare network inside a DDP/compiled wrapper."""
    while hasattr(network, "module") and isinstance(network.module, nn.Module):
        network = network.module
    return network
