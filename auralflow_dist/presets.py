"""Named starting points for ``auralflow config --preset``: a model.json and a trainer.json.

The seeds' defaults stay the defaults (``seeds``); a preset is a recipe measured to do better
on some machine, written out in full so the session folder says what was trained. Flags given
beside ``--preset`` override it. Each preset's figures are in docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict


@dataclass(frozen=True)
class Preset:
    summary: str
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "seeds": Preset("the seeds' defaults: the U-Net SpectrogramNetSimple, lr 0.01, SI-SDR loss"),
    "fast-cpu": Preset(
        "MaskInference, a 2-layer BiLSTM of 256 on decibel frames, lr 0.001, batch 8: "
        "about 180x real time per target on two CPU cores",
        model={"model_type": "MaskInference", "hidden_size": 256, "recurrent_depth": 2},
        trainer={"lr": 1e-3, "batch_size": 8},
    ),
}


def names() -> tuple[str, ...]:
    return tuple(PRESETS)


def apply(
    name: str, model: dict[str, Any], trainer: dict[str, Any] | None = None
) -> tuple[ModelConfig, TrainerConfig]:
    """The preset's configs with the user's own ``model``/``trainer`` values on top."""
    preset = PRESETS[name]
    return (
        from_dict(ModelConfig, {**preset.model, **model}),
        from_dict(TrainerConfig, {**preset.trainer, **(trainer or {})}),
    )
