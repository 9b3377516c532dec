"""The benchmarks' own instruments: what they report must mean what it says."""

from __future__ import annotations

import pytest

from bench.gpu_utilization import UtilizationSampler


def test_gpu_utilization_is_averaged_from_first_to_last_busy_sample() -> None:
    sampler = UtilizationSampler("cuda")
    sampler.samples = [0, 0, 60, 0, 90, 30, 0, 0]  # start-up, work with a data stall, teardown
    assert sampler.mean() == pytest.approx(45.0)
    assert sampler.describe() == ", GPU utilisation 45%"


def test_gpu_utilization_reports_an_idle_gpu_and_a_missing_nvml() -> None:
    idle = UtilizationSampler("cuda")
    idle.samples = [0, 0, 0]
    assert idle.mean() is None
    assert idle.describe() == ", GPU idle in all 3 samples"
    broken = UtilizationSampler("cuda")
    broken.error = "ModuleNotFoundError: No module named 'pynvml'"
    assert "not sampled (ModuleNotFoundError" in broken.describe()


def test_gpu_utilization_samples_nothing_on_cpu() -> None:
    with UtilizationSampler("cpu", interval_s=0.01) as sampler:
        pass
    assert sampler.samples == [] and sampler.describe() == ""
