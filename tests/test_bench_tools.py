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


def test_ray_process_cpu_counts_each_descendant_over_the_window_and_names_the_work(
    tmp_path,
) -> None:
    """A child burning a core through the window reads near 1 core, named by its script and
    counted as work; a sleeping one near 0, as Ray's own."""
    import subprocess
    import sys
    import time

    from bench.ray_processes import RayProcessCPU

    script = tmp_path / "busy_work.py"
    script.write_text("import time\nend = time.time() + 4\nwhile time.time() < end: pass\n")
    busy = subprocess.Popen([sys.executable, str(script)])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(4)"])
    try:
        with RayProcessCPU(work=["busy_work.py"], interval=0.2) as processes:
            time.sleep(1.0)
            processes.open_window()
            time.sleep(2.0)
        shares = {row.pid: row for row in processes.shares()}
    finally:
        busy.wait()
        idle.wait()
    assert shares[busy.pid].work and shares[busy.pid].name == "busy_work.py"
    assert shares[busy.pid].cores > 0.5
    assert shares[idle.pid].cores < 0.05 and not shares[idle.pid].work
    assert "Ray's own processes" in processes.report()


def test_quality_recipes_are_presets_with_model_and_trainer_fields_changed() -> None:
    import argparse

    from bench.quality import Recipe

    recipe = Recipe.parse("seeds:model_type=MaskInference,lr=0.002,hidden_size=64")
    model, trainer = recipe.configs({"max_minutes": 2.0, "workers_max": 1})
    assert model.model_type == "MaskInference" and model.hidden_size == 64
    assert trainer.optim.lr == 0.002 and trainer.optim.max_minutes == 2.0
    assert Recipe.parse("fast-cpu").configs({})[0].model_type == "MaskInference"
    assert Recipe.parse("seeds:lr=1,").changes == {"lr": "1"}  # a trailing comma is harmless
    for bad in ("nope", "seeds:lr", "nope:lr=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            Recipe.parse(bad)
