"""The memory estimate made before Ray starts, its refusal, and OOM kills read as one line."""

from __future__ import annotations

import re
import sys

import pytest
import ray

from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
from auralflow_dist.errors import ConfigError
from auralflow_dist.models.mask_model import SpectrogramMaskModel
from auralflow_dist.train import memory, trainer

# Ray 2.60's memory monitor (raylet) assembles its kill message from these lines.
OOM_2_60 = (
    "1 worker(s) were killed due to the node running low on memory. "
    "Memory on the node (IP: 10.0.3.17, ID: 8f0b6e3c2a1d4e5f) was 22.91GB used / "
    "23.47GB limit (0.976178)\n"
    "Ray killed 1 worker(s) based on the killing policy\n"
    "Considered workers: [(job ID=01000000, lease ID=2c0a, task name=RayTrainWorker.__init__, "
    "required resources={CPU: 1}, pid=48213, actual memory used=17.84GB, worker ID=a1b2c3)]\n"
    "To see more information about memory usage on this node, use "
    "`ray logs raylet.out -ip 10.0.3.17`\n"
    "Top 10 memory users: 48213 17.84GB ray::RayTrainWorker\n"
    "Refer to the documentation on how to address the out of memory issue: "
    "https://docs.ray.io/en/latest/ray-observability/user-guides/debug-apps/debug-memory.html."
)
# What a Train V2 run fails with when the kill took a training worker (ActorDiedError's lines).
ACTOR_OOM = (
    "Training failed due to worker errors:\n[Rank 0]\n"
    "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
    "\tclass_name: RayTrainWorker\n\tactor_id: 5e8c\n\tpid: 9911\n\tip: 10.0.0.5\n"
    "The actor is dead because its worker process has died. Worker exit type: "
    "NODE_OUT_OF_MEMORY Worker exit detail: Task was killed due to the node running low on "
    "memory.\nMemory on the node (IP: 10.0.0.5, ID: 77aa) where the task (actor ID: 5e8c, "
    "name=RayTrainWorker.__init__, pid=9911, memory used=14.20GB) was running was "
    "15.10GB / 15.62GB (0.966), which exceeds the memory usage threshold of 0.95."
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            OOM_2_60,
            "RayTrainWorker (pid 48213) using 17.8 GB for lack of memory on node "
            "10.0.3.17: 22.9 of 23.5 GB in use",
        ),
        (
            ACTOR_OOM,
            "RayTrainWorker (pid 9911) using 14.2 GB for lack of memory on node "
            "10.0.0.5: 15.1 of 15.6 GB in use",
        ),
    ],
)
def test_an_oom_kill_reads_as_one_line_naming_worker_memory_and_flags(text, expected):
    line = memory.describe_oom(text)
    assert line is not None and "\n" not in line
    assert expected in line
    assert "--batch-size" in line and "--sample-length" in line


def test_other_errors_are_not_taken_for_oom_kills():
    assert memory.describe_oom("ValueError: bad shape (1, 2)") is None
    cuda = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert memory.describe_oom(cuda) is None
    err = RuntimeError("Training failed due to worker errors:\n" + OOM_2_60)
    assert trainer._root_cause(err).startswith("Ray killed RayTrainWorker (pid 48213)")


# The default network on 0.5 s chunks: big enough that its tensors bypass the allocator's
# small free lists, as real models' do, small enough to step fast.
MODEL = {"sample_length": 0.5}
TINY = {
    "sample_rate": 8000,
    "sample_length": 0.5,
    "num_fft": 256,
    "window_size": 256,
    "hop_length": 128,
    "hidden_channels": 4,
}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS via /proc/self/clear_refs")
def test_the_estimate_from_batch_1_is_within_25_percent_of_a_step_at_batch_4():
    model_config = from_dict(ModelConfig, MODEL)
    trainer_config = from_dict(TrainerConfig, {"batch_size": 4})
    found = memory.estimate(model_config, trainer_config)
    model = SpectrogramMaskModel(model_config, trainer_config, device="cpu")
    weights = sum(p.numel() * p.element_size() for p in model.model.parameters())
    memory.training_step(model, 4)  # Adam's state, as the estimate's warm-up step made it
    # RSS growth under-reads when the heap reuses pages it kept (1 run in 3 on a busy machine
    # read 0.79x): the largest of three steps is the step's footprint.
    measured = max(memory.peak_growth(lambda: memory.training_step(model, 4)) for _ in range(3))
    predicted = found.per_sample * 4 + weights  # the step's activations and fresh gradients
    assert 0.75 * measured <= predicted <= 1.25 * measured, (predicted, measured)
    assert found.peak > predicted + memory.WORKER_BASE_BYTES


def test_a_config_over_the_memory_limit_fails_before_ray_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "worker_share", lambda trainer: (1.02e9, "this machine"))
    model_config = from_dict(ModelConfig, TINY)
    big = from_dict(TrainerConfig, {"batch_size": 32, "max_samples": 1000})
    ray_before = ray.is_initialized()
    # The dataset does not exist: the refusal must come before anything reads it.
    with pytest.raises(ConfigError) as err:
        trainer.train(str(tmp_path / "s"), str(tmp_path / "nowhere"), model_config, big)
    message = str(err.value)
    assert "\n" not in message and message.startswith("batch_size:")
    assert "--batch-size" in message and "--sample-length" in message
    assert "--skip-memory-check" in message and "GB" in message
    assert ray.is_initialized() == ray_before
    assert re.search(r"batch \d+ would fit|not even batch 1 fits", message)
    skipped = from_dict(TrainerConfig, {**trainer.to_dict(big), "skip_memory_check": True})
    with pytest.raises(Exception, match="nowhere"):  # past the check, on to the dataset
        trainer.train(str(tmp_path / "s"), str(tmp_path / "nowhere"), model_config, skipped)
