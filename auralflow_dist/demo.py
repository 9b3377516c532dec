"""``auralflow demo``: the main job end to end on generated data, local Ray and local storage."""

from __future__ import annotations

import time

import torch

from auralflow_dist import storage
from auralflow_dist.audio import io as audio_io
from auralflow_dist.config import ModelConfig
from auralflow_dist.data.generate import synthesize_track
from auralflow_dist.metrics import si_sdr
from auralflow_dist.models import count_parameters
from auralflow_dist.models.mask_model import SpectrogramMaskModel


def run_demo(workdir: str) -> None:
    """Build a model from the default config and separate a generated clip with it."""
    config = ModelConfig().validate()
    model = SpectrogramMaskModel(config)
    print(f"built {config.model_type} for '{config.target}' "
          f"({count_parameters(model.model):,} parameters) on {model.device}")
    stems = synthesize_track(seed=0, seconds=10.0, sample_rate=config.sample_rate)
    clip = storage.join(workdir, "clip", "mixture.wav")
    audio_io.write(clip, stems["mixture"], config.sample_rate)
    mixture, rate = audio_io.read(clip)
    start = time.perf_counter()
    estimate = model.separate(mixture, sample_rate=rate).numpy()
    took = time.perf_counter() - start
    out = storage.join(workdir, "separated", "clip", f"{config.target}.wav")
    audio_io.write(out, estimate, rate)
    residual = storage.join(workdir, "separated", "clip", "residual.wav")
    audio_io.write(residual, mixture - estimate, rate)
    target = stems[config.target]
    score = float(si_sdr(torch.from_numpy(estimate), torch.from_numpy(target)).mean())
    baseline = float(si_sdr(torch.from_numpy(mixture), torch.from_numpy(target)).mean())
    seconds = mixture.shape[-1] / rate
    print(f"separated {seconds:.1f} s of audio in {took:.2f} s ({seconds / took:.1f}x real time)")
    print(f"SI-SDR vs the true {config.target}: mixture {baseline:.2f} dB, "
          f"untrained estimate {score:.2f} dB")
    print(f"wrote {out} and {residual}")
