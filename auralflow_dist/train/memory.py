"""Memory: a training worker's peak, estimated before Ray starts; an OOM kill, read as one line.

A CPU training worker's memory is almost all activations kept for the backward pass, linear in
the batch: the default model (3 s chunks, 1024-point FFT, 16 hidden channels) needs about 18 GB
at batch 32. Ray's memory monitor kills such a worker with a paragraph of text; `check` refuses
the config up front instead, and `describe_oom` turns a kill that still happens into one line.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from auralflow_dist.config import ModelConfig, TrainerConfig
from auralflow_dist.errors import ConfigError

if TYPE_CHECKING:  # torch and Ray load only where an estimate is made: describe_oom stays light
    from auralflow_dist.models.mask_model import SpectrogramMaskModel

# What lowers a training worker's peak, in the order it pays off.
REMEDY = (
    "lower --batch-size, --sample-length (seconds per chunk) or --hidden-channels, "
    "or use fewer --workers per node"
)

_NODE = re.compile(
    r"Memory on the node \(IP: (?P<ip>[^,]+), ID: (?P<id>\w+)\)"
    r"(?:.*?was running)? was (?P<used>[\d.]+) ?GB(?: used)? / (?P<total>[\d.]+) ?GB",
    re.S,
)
_WORKER_NAME = re.compile(r"(?:name=|class_name: )(?P<name>[\w.<>()-]+)")
_WORKER_PID = re.compile(r"\bpid(?:=|: )(?P<pid>\d+)")
_WORKER_MEMORY = re.compile(r"(?:memory used=|Memory used: )(?P<gb>[\d.]+) ?Gi?B", re.I)
_OOM_MARKERS = (
    "running low on memory",
    "running out of memory",
    "killed due to memory pressure",
    "ray.exceptions.OutOfMemoryError",  # not torch's (CUDA) OutOfMemoryError
    "NODE_OUT_OF_MEMORY",
)


def describe_oom(text: str) -> str | None:
    """One line for Ray's OOM-kill paragraph (which worker, how much of how much, what to lower).

    Reads both the 2.60 memory monitor's wording ("Memory on the node (IP: ..., ID: ...) was
    X GB used / Y GB limit", "pid=..., actual memory used=...GB") and the older one ("Task was
    killed due to the node running low on memory ... was running was X GB / Y GB"). None for
    any other text, so callers can fall back to their own summary.
    """
    node = _NODE.search(text)
    if node is None and not any(marker in text for marker in _OOM_MARKERS):
        return None
    worker = "a worker"
    name, pid = _WORKER_NAME.search(text), _WORKER_PID.search(text)
    if name or pid:
        worker = " ".join(
            part
            for part in (name and name["name"].split(".")[0], pid and f"(pid {pid['pid']})")
            if part
        )
    own = _WORKER_MEMORY.search(text)
    uses = f" using {float(own['gb']):.1f} GB" if own else ""
    where = ""
    if node:
        where = (
            f" on node {node['ip']}: {float(node['used']):.1f} of {float(node['total']):.1f} GB "
            "in use"
        )
    return f"Ray killed {worker}{uses} for lack of memory{where}; {REMEDY}"


# What one training worker holds besides the batch: importing torch, Ray Train and Ray Data
# alone takes 0.7 GB; Ray's core worker and the Ray Data iterator's threads add to it.
WORKER_BASE_BYTES = 1.0e9
# Weights, their gradients and Adam's two moments.
PARAM_COPIES = 4
GB = 1e9


@dataclass(frozen=True)
class MemoryEstimate:
    """A CPU training worker's peak: ``per_sample * batch_size + fixed`` bytes."""

    per_sample: float  # what one chunk of the batch adds to a training step's peak
    fixed: float  # weights, optimizer, buffered chunks and the worker's own footprint
    batch_size: int

    @property
    def peak(self) -> float:
        return self.per_sample * self.batch_size + self.fixed

    def largest_batch(self, limit: float) -> int:
        """The largest batch size whose peak stays within ``limit`` bytes (0: none)."""
        return max(0, int((limit - self.fixed) // self.per_sample))

    def __str__(self) -> str:
        return f"~{self.peak / GB:.1f} GB per worker"


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def peak_growth(run: Callable[[], object]) -> int:
    """How far ``run()`` raises this process's peak resident memory above its current one.

    Linux: free heap pages go back to the OS first (glibc's ``malloc_trim``) and the peak
    (``VmHWM``) restarts from the current size (``/proc/self/clear_refs``); OSError elsewhere.
    """
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    run()
    return _status("VmHWM") - base


def training_step(model: SpectrogramMaskModel, batch_size: int) -> None:
    """One forward, backward and optimizer step on a random batch at the model's shapes."""
    import torch

    c = model.config
    mixture = 0.1 * torch.randn(batch_size, c.num_channels, c.num_samples)
    model.set_data(mixture, 0.5 * mixture)
    model.forward()
    model.compute_loss()
    model.backward()
    model.optimizer_step()


def estimate(model_config: ModelConfig, trainer: TrainerConfig) -> MemoryEstimate | None:
    """The per-worker peak of training ``model_config`` under ``trainer`` on a CPU worker.

    Measured, not modelled: a warm-up step allocates the optimizer and torch's one-time
    buffers, then the peak growth of a step of one chunk, less its fresh gradients, is what
    each chunk of a batch adds (activations are linear in the batch). 3-5 s for the default
    model on 2 busy cores, and within 10% of its measured step peak at batches 4 and 8
    (issue 16 saw ~18 GB at batch 32; this says 18-22). None where the peak cannot be read
    (not Linux).
    """
    from auralflow_dist.data.pipeline import CHUNKS_PER_TASK
    from auralflow_dist.models.mask_model import SpectrogramMaskModel

    model = SpectrogramMaskModel(model_config, trainer, device="cpu")
    model.train()
    weights = sum(p.numel() * p.element_size() for p in model.model.parameters())
    training_step(model, 1)
    try:
        per_sample = max(peak_growth(lambda: training_step(model, 1)) - weights, 1)
    except OSError:
        return None
    data = trainer.data
    # Float32 mixture and target per chunk, in the shuffle buffer, the prefetched batches and
    # the block being consumed.
    chunk = 2 * model_config.num_channels * model_config.num_samples * 4
    buffered = data.shuffle_buffer + (data.pre_fetch + 1) * data.batch_size + CHUNKS_PER_TASK
    fixed = WORKER_BASE_BYTES + PARAM_COPIES * weights + buffered * chunk
    return MemoryEstimate(per_sample, fixed, data.batch_size)


def _available_here() -> float:
    """Memory this machine has available now (``MemAvailable``), else all of it."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def worker_share(trainer: TrainerConfig) -> tuple[float, str]:
    """Bytes one training worker can have, and where they are: the roomiest node's share.

    Ray Train packs workers onto as few nodes as it can, so a node that fits ``k`` of them
    (by CPUs and GPUs) splits Ray's ``memory`` resource (what tasks and actors may use) ``k``
    ways. Without a Ray instance yet, a local one will start here: this machine's available
    memory, split among all the workers.
    """
    import ray

    cluster = trainer.cluster
    if not ray.is_initialized():
        return _available_here() / cluster.workers_max, "this machine"
    best, where = 0.0, "no node"
    for node in ray.nodes():
        resources = node.get("Resources", {})
        if not node.get("Alive") or "memory" not in resources:
            continue
        fits = resources.get("CPU", 0) // cluster.cpus_per_worker
        if cluster.gpus_per_worker > 0:
            fits = min(fits, resources.get("GPU", 0) // cluster.gpus_per_worker)
        workers = min(int(fits), cluster.workers_max)
        if workers > 0 and resources["memory"] / workers > best:
            best = resources["memory"] / workers
            where = f"node {node.get('NodeManagerAddress', '?')} ({workers} worker(s) there)"
    return best, where


def check(model_config: ModelConfig, trainer: TrainerConfig) -> MemoryEstimate | None:
    """The estimate, or a `ConfigError` naming the flags to change where it exceeds the share.

    None for GPU workers (their activations live on the GPU, which the driver cannot see) and
    where nothing could be measured.
    ``--skip-memory-check`` keeps the estimate (for the log) but never refuses.
    """
    if trainer.cluster.gpus_per_worker > 0:
        return None
    found = estimate(model_config, trainer)
    if found is None or trainer.cluster.skip_memory_check:
        return found
    share, where = worker_share(trainer)
    if found.peak <= share:
        return found
    fits = found.largest_batch(share)
    hint = f"batch {fits} would fit" if fits else "not even batch 1 fits"
    raise ConfigError(
        "batch_size",
        f"a CPU training worker needs {found} (batch {found.batch_size} x "
        f"{found.per_sample / GB:.2f} GB + {found.fixed / GB:.1f} GB), more than the "
        f"{share / GB:.1f} GB it gets on {where} ({hint}); {REMEDY}, "
        "or pass --skip-memory-check",
    )
