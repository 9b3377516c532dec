"""Ray Data datasets of ``(mixture, target)`` chunks for training and validation.

The training dataset is ``range(max_samples)`` (one row per chunk slot) mapped by decode tasks:
each task draws its slots' chunks from ``(seed, epoch, slot)`` and reads only their frames. Ray
Train re-executes the same Dataset every epoch; the epoch comes from a tiny named actor, the
`EpochClock`, which the training loop sets before iterating and each decode batch reads once.
So every epoch has new chunks, reproducible from the seed, and nothing is materialised: memory
holds a few batches of chunks, never a whole track.

Decoding runs as Ray tasks (``TaskPoolStrategy``, Ray 2.60's replacement for the deprecated
``concurrency=``): ``num_workers`` caps the concurrent decode tasks (0 means one, like the seeds'
in-process loading), ``decode_cpus`` is what each reserves. Rows carry waveforms only; the STFT
runs on the training worker's device. The tasks read with the S3 settings the building process
had (its environment and `storage.configure`), since workers need not share its environment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from auralflow_dist import allocator, storage
from auralflow_dist.config import ModelConfig, TrainerConfig
from auralflow_dist.data import manifest as manifests
from auralflow_dist.data.chunks import ChunkDrawer, ChunkSpec, validation_chunks
from auralflow_dist.data.decode import PCM16_SCALE, DecodeSettings, decode_chunk
from auralflow_dist.errors import AuralflowError, ConfigError

CLOCK_NAMESPACE = "auralflow"
# Chunks per decode task, decoded in one call into one output block (~68 MB of 3 s stereo chunks at
# 44.1 kHz). Far fewer spend the driver's time scheduling tasks and, where a block holds several
# decode batches, make the consumer concatenate them (both halved the rate on 2 CPUs); far more
# only hold more memory per task.
CHUNKS_PER_TASK = 32


@ray.remote(num_cpus=0)
class EpochClock:
    """The current epoch, shared by the training loop (writer) and decode tasks (readers).

    Every rank may set it (to the same value) before iterating: the epoch's execution starts
    when the first rank asks for data, and must already see the new epoch.
    """

    def __init__(self) -> None:
        self._epoch = 0

    def set(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def get(self) -> int:
        return self._epoch


def get_or_create_epoch_clock(name: str) -> ray.actor.ActorHandle:
    """The clock named ``name`` (one per run), created at epoch 0 where it does not exist yet.

    It lives on the creating node (the driver's, which outlives a lost worker node) and is
    restarted if it dies anyway: rank 0 sets the epoch before every epoch, so a restarted clock
    loses nothing.
    """
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return EpochClock.options(
        name=name,
        namespace=CLOCK_NAMESPACE,
        get_if_exists=True,
        scheduling_strategy=here,
        max_restarts=-1,
        max_task_retries=-1,
    ).remote()


def read_epoch(source: int | str) -> int:
    """A fixed epoch, or the one the clock named ``source`` shows now."""
    if isinstance(source, int):
        return source
    clock = ray.get_actor(source, namespace=CLOCK_NAMESPACE)
    return int(ray.get(clock.get.remote()))


@dataclass(frozen=True)
class _EpochSlots:
    """Training slots: drawn afresh from the seed and the clock's epoch."""

    seed: int
    epoch_source: int | str

    def specs(self, drawer: ChunkDrawer, ids: np.ndarray) -> list[ChunkSpec]:
        epoch = read_epoch(self.epoch_source)
        return [drawer.draw(self.seed, epoch, int(i)) for i in ids]


@dataclass(frozen=True)
class _FixedSlots:
    """Validation slots: the same chunks every time."""

    chunks: tuple[ChunkSpec, ...]

    def specs(self, drawer: ChunkDrawer, ids: np.ndarray) -> list[ChunkSpec]:
        return [self.chunks[int(i)] for i in ids]


def _decode_batch(
    batch: dict[str, np.ndarray],
    *,
    slots: _EpochSlots | _FixedSlots,
    drawer: ChunkDrawer,
    settings: DecodeSettings,
    s3: storage.S3Settings,
) -> dict[str, np.ndarray]:
    # Workers may lack the driver's environment: read with the S3 settings it had.
    storage.configure(s3)
    chunks = [decode_chunk(drawer, spec, settings) for spec in slots.specs(drawer, batch["id"])]
    return {
        "mixture": np.stack([c.mixture for c in chunks]),
        "target": np.stack([c.target for c in chunks]),
        "redraws": np.array([c.redraws for c in chunks], dtype=np.int32),
    }


def _load(manifest: str | pa.Table) -> tuple[pa.Table, str]:
    if isinstance(manifest, pa.Table):
        return manifest, "manifest"
    return manifests.read_manifest(manifest), manifest


def _drawer(
    tracks: list[manifests.Track], settings: DecodeSettings, where: str, split: str
) -> ChunkDrawer:
    if not tracks:
        raise AuralflowError(f"{where}: no {split} tracks")
    lacking = [t for t in tracks if settings.target not in t.stem_names]
    if lacking:
        raise ConfigError(
            "target",
            f"{where}: {len(lacking)} {split} track(s) have no {settings.target!r} stem "
            f"(e.g. {lacking[0].name!r} has {', '.join(lacking[0].stem_names)})",
        )
    return ChunkDrawer(tracks, settings.chunk_seconds)


def _dataset(
    count: int,
    slots: _EpochSlots | _FixedSlots,
    drawer: ChunkDrawer,
    settings: DecodeSettings,
    trainer: TrainerConfig,
) -> ray.data.Dataset:
    tasks = max(1, trainer.data.num_workers)
    # At least one block per concurrent task, so small datasets still decode (and split) in parallel.
    blocks = max(math.ceil(count / CHUNKS_PER_TASK), min(count, tasks))
    # Slot ids come from the driver (a few bytes per block), not from `ray.data.range`: its read
    # tasks competed with decoding for the CPUs.
    slot_ids = ray.data.from_items([{"id": i} for i in range(count)], override_num_blocks=blocks)
    dataset = slot_ids.map_batches(
        _decode_batch,
        batch_size=None,  # one call per block of slots
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=tasks),
        num_cpus=trainer.data.decode_cpus,
        runtime_env=allocator.worker_runtime_env(),
        fn_kwargs={
            "slots": slots,
            "drawer": drawer,
            "settings": settings,
            "s3": storage.current_settings(),
        },
    )
    # Ray Data reserves half the CPUs per operator for multi-stage pipelines; with decoding the
    # only stage, that left one decode task running on 2 CPUs.
    dataset.context.op_resource_reservation_enabled = False
    # Blocks in slot order, and batches in block order: without it decode tasks finishing first
    # and the consumer's formatting threads reorder batches run to run, so no run (resumed or
    # not) could be repeated. Decode tasks take about equally long: little is held back.
    dataset.context.execution_options.preserve_order = True
    return dataset


def build_train_dataset(
    manifest: str | pa.Table,
    model_config: ModelConfig,
    trainer_config: TrainerConfig,
    epoch_source: int | str,
) -> ray.data.Dataset:
    """``max_samples`` augmented training chunks per epoch from the first ``max_tracks`` tracks.

    ``epoch_source`` is the name of an `EpochClock` (training) or a fixed epoch (benchmarks).
    """
    table, where = _load(manifest)
    settings = DecodeSettings.from_configs(model_config, trainer_config, augment=True)
    data = trainer_config.data
    tracks = manifests.tracks(table, "train")[: data.max_tracks]
    drawer = _drawer(tracks, settings, where, "train")
    settings = settings.for_tracks(drawer.tracks)
    slots = _EpochSlots(trainer_config.optim.seed, epoch_source)
    return _dataset(data.max_samples, slots, drawer, settings, trainer_config)


def build_val_dataset(
    manifest: str | pa.Table, model_config: ModelConfig, trainer_config: TrainerConfig
) -> ray.data.Dataset:
    """``val_chunks`` fixed, unaugmented chunks spread over the validation tracks.

    Materialised (decoded once, kept in the object store) when ``persistent_workers`` is set.
    """
    table, where = _load(manifest)
    settings = DecodeSettings.from_configs(model_config, trainer_config, augment=False)
    drawer = _drawer(manifests.tracks(table, "valid"), settings, where, "valid")
    settings = settings.for_tracks(drawer.tracks)
    specs = validation_chunks(
        drawer.tracks,
        trainer_config.data.val_chunks,
        settings.chunk_seconds,
        trainer_config.optim.seed,
    )
    dataset = _dataset(len(specs), _FixedSlots(tuple(specs)), drawer, settings, trainer_config)
    return dataset.materialize() if trainer_config.data.persistent_workers else dataset


@dataclass
class ChunkStats:
    """Counts for the training log; summed on the batches' device without a sync per batch."""

    chunks: int = 0
    _silent: torch.Tensor | int = field(default=0, repr=False)

    def add(self, redraws: torch.Tensor) -> None:
        self.chunks += len(redraws)
        self._silent = self._silent + redraws.sum()

    @property
    def silent_dropped(self) -> int:
        """Silent chunks dropped and replaced by redraws."""
        return int(self._silent)


def iter_batches(
    shard: ray.data.DataIterator | ray.data.Dataset,
    batch_size: int,
    shuffle_buffer: int = 0,
    prefetch: int = 1,
    device: str | torch.device = "auto",
    pin_memory: bool = False,
    drop_last: bool = True,
    stats: ChunkStats | None = None,
    shuffle_seed: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(mixture, target)`` float32 tensors ``(batch, channels, samples)`` from a shard.

    A ``shuffle_buffer`` of rows mixes chunks of different decode tasks; 0 keeps arrival order.
    ``shuffle_seed`` makes that mix reproducible (training passes one per epoch and rank).
    16-bit chunks travel to ``device`` as they are and become float there.
    """
    batches = shard.iter_torch_batches(
        batch_size=batch_size,
        local_shuffle_buffer_size=max(shuffle_buffer, batch_size) if shuffle_buffer else None,
        local_shuffle_seed=shuffle_seed if shuffle_buffer else None,
        prefetch_batches=prefetch,
        drop_last=drop_last,
        device=device,
        pin_memory=pin_memory,
    )
    for batch in batches:
        if stats is not None:
            stats.add(batch["redraws"])
        yield _to_float(batch["mixture"]), _to_float(batch["target"])


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().mul_(PCM16_SCALE) if x.dtype == torch.int16 else x
