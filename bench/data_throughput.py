"""Chunks per second the Ray Data pipeline delivers to a consumer, beside a plain soundfile loop.

Both read the same chunks (one epoch's `draw_epoch`): the reference reads each range with
soundfile (by path on local disk, through a ranged-read file object on S3), one chunk after another
in this process; the pipeline
decodes in Ray tasks and hands torch batches to a consumer, as a training worker sees them. Run
from a local folder and from a local S3 server (SeaweedFS, started like the tests' fixture).
Augmentation is off for the comparison (both read mixture and target); the augmented pipeline
(gain, swap, remix: every stem read) is printed beside it. Floor: from local disk on 2 CPUs the
pipeline delivers at least half the reference's rate. The reference runs with the same heap
settings (`allocator.tune`) as the pipeline's Ray workers.

Last, what one decode CPU delivers: `decode_chunk` on one thread in this process, chunks per
CPU-second (``time.process_time``), with and without augmentation, on local disk. A GPU trainer
at R samples/s needs R / that rate decode CPUs beside its own (docs/benchmarks.md, sizing).

    python -m bench.data_throughput [--tracks 6] [--seconds 30] [--chunks 2048] [--s3-chunks 128]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import soundfile as sf

from auralflow_dist import allocator, idle_executor, runtime, storage
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
from auralflow_dist.data import manifest, pipeline
from auralflow_dist.data.chunks import ChunkDrawer, draw_epoch
from auralflow_dist.data.decode import DecodeSettings, decode_chunk
from auralflow_dist.data.generate import write_dataset

FLOOR = 0.5


def best_rate(count: int, run: Callable[[], None], passes: int = 2) -> float:
    """Chunks per second of the fastest of ``passes`` timed runs after an untimed warm-up
    (page cache, server caches, Ray worker start-up)."""
    run()
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return count / min(times)


def raw_loop(tracks: list[manifest.Track], model: ModelConfig, trainer: TrainerConfig) -> float:
    """Soundfile reads of each chunk's mixture and target range, one after another."""
    specs = draw_epoch(
        tracks,
        0,
        trainer.optim.seed,
        trainer.data.max_samples,
        model.num_samples / model.sample_rate,
    )

    def run() -> None:
        for spec in specs:
            track = tracks[spec.track]
            for url in (track.mixture_url, track.stem_url(model.target)):
                with contextlib.ExitStack() as stack:
                    path = storage.local_path(url)
                    source = path or stack.enter_context(storage.open_file(url))
                    snd = stack.enter_context(sf.SoundFile(source))
                    snd.seek(spec.offset)
                    snd.read(model.num_samples, dtype="float32", always_2d=True)

    return best_rate(len(specs), run)


def pipeline_rate(table: pa.Table, model: ModelConfig, trainer: TrainerConfig) -> float:
    """What a training loop receives through `iter_batches`."""
    dataset = pipeline.build_train_dataset(table, model, trainer, 0)

    def run() -> None:
        for _ in pipeline.iter_batches(
            dataset, trainer.data.batch_size, prefetch=trainer.data.pre_fetch
        ):
            pass

    return best_rate(trainer.data.max_samples, run)


@contextlib.contextmanager
def s3_root(workdir: Path) -> Iterator[str | None]:
    """A fresh bucket on a local SeaweedFS server, or None where no ``weed`` binary is installed."""
    from tests.conftest import make_server, weed_binary

    binary = weed_binary()
    if binary is None:
        yield None
        return
    server = make_server(workdir / "seaweedfs", binary)
    server.start()
    try:
        storage.configure(server.settings())
        yield f"s3://{server.new_bucket()}/bench"
    finally:
        storage.configure(None)
        server.stop()


def decode_per_cpu(
    table: pa.Table, model: ModelConfig, trainer: TrainerConfig, count: int
) -> float:
    """Chunks per CPU-second of `decode_chunk` on this thread: what one decode task's CPU gives."""
    tracks = manifest.tracks(table, "train")
    settings = DecodeSettings.from_configs(model, trainer, augment=True).for_tracks(tracks)
    drawer = ChunkDrawer(tracks, settings.chunk_seconds)
    specs = [drawer.draw(trainer.optim.seed, 0, i) for i in range(count)]
    for spec in specs[:8]:  # page cache and first-call costs
        decode_chunk(drawer, spec, settings)
    start = time.process_time()
    for spec in specs:
        decode_chunk(drawer, spec, settings)
    return count / (time.process_time() - start)


def measure(root: str, chunks: int, args: argparse.Namespace) -> dict[str, float]:
    url = storage.join(root, "ds")
    write_dataset(url, tracks=args.tracks, seconds=args.seconds, seed=0, splits=("train",))
    table = manifest.scan(url, val_fraction=0).table
    model = ModelConfig(num_channels=2).validate()  # 3 s chunks, 44.1 kHz stereo
    base = {"max_samples": chunks, "batch_size": 16, "num_workers": args.cpus}
    plain = from_dict(
        TrainerConfig,
        {**base, "augment_gain": False, "augment_channel_swap": False, "augment_remix": False},
    )
    augmented = from_dict(TrainerConfig, base)
    tracks = manifest.tracks(table, "train")
    rates = {
        "raw": raw_loop(tracks, model, plain),
        "pipeline": pipeline_rate(table, model, plain),
        "augmented": pipeline_rate(table, model, augmented),
    }
    if storage.local_path(url) is not None:
        count = min(chunks, 512)
        rates["per_cpu"] = decode_per_cpu(table, model, plain, count)
        rates["per_cpu_augmented"] = decode_per_cpu(table, model, augmented, count)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--chunks", type=int, default=2048, help="chunks per pass from local disk")
    parser.add_argument("--s3-chunks", type=int, default=128, help="chunks per pass from S3")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    allocator.tune()  # the Ray workers get the same heap settings

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    idle_executor.install()
    ray.init(  # as `runtime.connect`, with this bench's CPUs
        address="local",
        num_cpus=args.cpus,
        include_dashboard=False,
        configure_logging=False,
        runtime_env=idle_executor.RUNTIME_ENV,
        _system_config={"worker_niceness": runtime.WORKER_NICENESS},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = {}
    with tempfile.TemporaryDirectory(prefix="auralflow-bench-") as tmp:
        results["local"] = measure(str(Path(tmp) / "local"), args.chunks, args)
        with s3_root(Path(tmp)) as root:
            if root is not None:
                results["s3"] = measure(root, args.s3_chunks, args)
    ray.shutdown()

    print(f"chunks of 3 s, 44.1 kHz stereo, {args.cpus} CPUs for Ray (chunks/s, best of 2 passes)")
    print(
        f"{'source':8} {'raw loop':>9} {'pipeline':>9} {'ratio':>6} {'augmented':>10} {'ratio':>6}"
    )
    for source, r in results.items():
        print(
            f"{source:8} {r['raw']:9.1f} {r['pipeline']:9.1f} {r['pipeline'] / r['raw']:6.2f} "
            f"{r['augmented']:10.1f} {r['augmented'] / r['raw']:6.2f}"
        )
    local = results["local"]
    print(
        f"one decode CPU (decode_chunk, local disk): {local['per_cpu']:.1f} chunks per "
        f"CPU-second plain, {local['per_cpu_augmented']:.1f} augmented"
    )
    ratio = results["local"]["pipeline"] / results["local"]["raw"]
    verdict = "ok" if ratio >= FLOOR else "BELOW FLOOR"
    print(f"floor: local pipeline >= {FLOOR:.2f} x raw loop: {ratio:.2f} ({verdict})")


if __name__ == "__main__":
    main()
