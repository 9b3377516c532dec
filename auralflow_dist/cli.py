"""The ``auralflow`` command: parse flags, build a config, call the library. Nothing else."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from auralflow_dist import config as cfg
from auralflow_dist import flags, presets
from auralflow_dist.errors import AuralflowError, ConfigError


def _cmd_config(args: argparse.Namespace) -> None:
    from auralflow_dist.session import write_configs, write_model_config

    values = flags.given(args, cfg.ModelConfig)
    chosen = [t for t in cfg.MUSDB_TARGETS if getattr(args, f"target_{t}")]
    if len(chosen) + (args.target is not None) > 1:
        raise ConfigError("target", "choose one target")
    if chosen:
        values["target"] = chosen[0]
    if args.preset:
        model_config, trainer_config = presets.apply(args.preset, values)
        paths = write_configs(args.save, model_config, trainer_config, overwrite=args.overwrite)
        print(f"wrote {' and '.join(paths)} (preset {args.preset})")
    else:
        model_config = cfg.from_dict(cfg.ModelConfig, values)
        print(f"wrote {write_model_config(args.save, model_config, overwrite=args.overwrite)}")
    if args.display:
        from auralflow_dist.models import count_parameters
        from auralflow_dist.models.registry import build_network

        print(cfg.to_json(model_config), end="")
        params = count_parameters(build_network(model_config))
        print(f"{model_config.model_type}: {params:,} parameters ({params / 1e6:.1f}M)")


def _trainer_config(args: argparse.Namespace) -> cfg.TrainerConfig:
    """The session's trainer.json (if any), else the defaults; the flags given override either."""
    from auralflow_dist.session import read_trainer_config

    base = read_trainer_config(args.session)
    values = {**(cfg.to_dict(base) if base else {}), **flags.given(args, cfg.TrainerConfig)}
    return cfg.from_dict(cfg.TrainerConfig, values)


def _cmd_train(args: argparse.Namespace) -> None:
    from auralflow_dist.runtime import connect
    from auralflow_dist.session import read_model_config
    from auralflow_dist.train.trainer import train

    model_config = read_model_config(args.session)
    trainer_config = _trainer_config(args)
    if args.display:
        print(cfg.to_json(trainer_config), end="")
    cluster = trainer_config.cluster
    if args.targets:
        _train_targets(args, model_config, trainer_config)
        return
    connect(args.address, cluster.workers_max * cluster.cpus_per_worker)
    result = train(
        args.session,
        args.dataset,
        model_config,
        trainer_config,
        resume=args.resume,
        metrics_port=args.metrics_port,
        pushgateway=args.pushgateway,
        init_weights=_init_from(args),
    )
    print(result.summary())


def _init_from(args: argparse.Namespace) -> str | None:
    """``--init-from``: a model URL as given, or the cached folder of a model index name."""
    from auralflow_dist.models import index

    return index.resolve(args.init_from, args.model_index) if args.init_from else None


def _train_targets(
    args: argparse.Namespace, model_config: cfg.ModelConfig, trainer: cfg.TrainerConfig
) -> None:
    from auralflow_dist.errors import AuralflowError, ConfigError
    from auralflow_dist.runtime import connect
    from auralflow_dist.train.targets import resolve_targets, summary_table, train_targets

    if args.metrics_port is not None or args.pushgateway:
        raise ConfigError("targets", "--metrics-port/--pushgateway serve one target's run only")
    targets = resolve_targets(args.targets, args.dataset)
    cluster = trainer.cluster
    connect(args.address, len(targets) * cluster.workers_max * cluster.cpus_per_worker)
    outcomes = train_targets(
        args.session,
        args.dataset,
        model_config,
        trainer,
        targets,
        resume=args.resume,
        init_weights=_init_from(args),
    )
    print(summary_table(outcomes))
    failed = [o.target for o in outcomes if o.result is None]
    if failed:
        raise AuralflowError(
            f"{len(failed)} of {len(outcomes)} target(s) failed: {', '.join(failed)}"
        )


def _cmd_prepare(args: argparse.Namespace) -> None:
    from auralflow_dist.data.manifest import prepare

    out, result = prepare(args.dataset, args.out, strict=args.strict, seed=args.seed)
    for problem in result.problems:
        print(f"skipped {problem}")
    counts = result.table.group_by("split").aggregate([("track", "count")]).to_pylist()
    summary = ", ".join(f"{c['track_count']} {c['split']}" for c in counts)
    print(
        f"wrote {out}: {result.table.num_rows} tracks ({summary}), {len(result.problems)} skipped"
    )


def _cmd_test(args: argparse.Namespace) -> None:
    from auralflow_dist.evaluate import evaluate
    from auralflow_dist.runtime import connect

    config = cfg.from_dict(cfg.EvalConfig, flags.given(args, cfg.EvalConfig))
    connect(args.address, config.workers)
    url, rows = evaluate(config)
    median = next(r for r in rows if r["track"] == "median")
    stems = [k.removesuffix("_si_sdri") for k in median if k.endswith("_si_sdri")]
    nan = float("nan")
    for stem in [s for s in stems if s != "residual"]:
        print(
            f"median {stem} SI-SDR {median.get(f'{stem}_si_sdr', nan):+.2f} dB "
            f"(improvement {median.get(f'{stem}_si_sdri', nan):+.2f} dB)"
        )
    print(f"{len(rows) - 2} tracks; wrote {url}")


def _cmd_separate(args: argparse.Namespace) -> None:
    from auralflow_dist.separate import from_args, run_separation

    print(run_separation(from_args(args)).describe())


def _cmd_tune(args: argparse.Namespace) -> None:
    from auralflow_dist.tune import run_sweep

    sweep = cfg.from_dict(cfg.SweepConfig, flags.given(args, cfg.SweepConfig))
    print(run_sweep(sweep).text())


def _cmd_make_dataset(args: argparse.Namespace) -> None:
    misplaced = [
        flag
        for flag, value, source in (
            ("--tracks", args.tracks, "generated"),
            ("--seed", args.seed, "generated"),
            ("--midi", args.midi, "midi"),
            ("--soundfont", args.soundfont, "midi"),
        )
        if value is not None and source != args.source
    ]
    if misplaced:
        raise ConfigError("source", f"{args.source} takes no {', '.join(misplaced)}")
    if args.source == "midi":
        _make_midi_dataset(args)
        return
    from auralflow_dist.data.generate import write_dataset

    def progress(done: int, total: int) -> None:
        print(f"\rgenerated {done}/{total} tracks", end="" if done < total else "\n", flush=True)

    tracks = write_dataset(
        args.url,
        tracks=8 if args.tracks is None else args.tracks,
        seconds=20.0 if args.seconds is None else args.seconds,
        seed=0 if args.seed is None else args.seed,
        sample_rate=args.sample_rate,
        fmt=args.format,
        progress=progress,
    )
    print(f"wrote {len(tracks)} tracks under {args.url}")


def _make_midi_dataset(args: argparse.Namespace) -> None:
    from auralflow_dist.data import midi

    seconds = []

    def progress(done: int, total: int, song: midi.RenderedSong) -> None:
        seconds.append(song.seconds)
        print(f"rendered {done}/{total}: {song.describe()}", flush=True)

    tracks = midi.write_midi_dataset(
        args.url,
        midi_files=args.midi,
        sample_rate=args.sample_rate,
        seconds=args.seconds,
        fmt=args.format,
        progress=progress,
        soundfont=args.soundfont or midi.SOUNDFONT,
    )
    print(f"wrote {len(tracks)} tracks ({sum(seconds) / 60:.1f} minutes) under {args.url}")


def _cmd_download(args: argparse.Namespace) -> None:
    from auralflow_dist import storage
    from auralflow_dist.models import index
    from auralflow_dist.session import download

    entry = None if "://" in args.model else index.lookup(args.model, args.model_index)
    if entry is None:
        if not storage.exists(args.model):
            index.resolve(args.model, args.model_index)  # names what the index has
        print(f"downloaded to {download(args.model, args.save, sha256=args.sha256)}")
        return
    index.fetch(entry, args.save)
    print(
        f"downloaded {entry.name} ({', '.join(entry.targets)}) to {args.save}; every file checked"
    )


def _cmd_export(args: argparse.Namespace) -> None:
    from auralflow_dist.export import export
    from auralflow_dist.models import index

    for folder in export(index.resolve(args.model, args.model_index), args.format, args.save):
        print(f"exported to {folder} (checked against the network at two lengths)")


def _cmd_index(args: argparse.Namespace) -> None:
    from auralflow_dist.models.index import add_to_index

    entry = add_to_index(args.save, args.name, args.model)
    print(f"{args.save}: {args.name} -> {args.model} ({len(entry['files'])} files with SHA-256)")


def _cmd_demo(args: argparse.Namespace) -> None:
    from auralflow_dist.demo import run_demo

    run_demo(args.workdir, quick=args.quick)


def _add_model_index(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-index",
        "--model_index",
        dest="model_index",
        default=None,
        help="the model index's URL (default: $AURALFLOW_MODEL_INDEX)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auralflow",
        description="Train, tune, evaluate and run music source separation models on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "config", help="write a model configuration (model.json) to a session folder"
    )
    p.add_argument("--save", default="my_model", help="session folder (local path or URL)")
    p.add_argument("--display", action="store_true", help="print the config and parameter count")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing model.json (the folder is never deleted)",
    )
    for target in cfg.MUSDB_TARGETS:
        p.add_argument(
            f"--{target}", dest=f"target_{target}", action="store_true", help=f"isolate {target}"
        )
    p.add_argument(
        "--preset",
        choices=presets.names(),
        default=None,
        help="write a measured recipe's model.json and trainer.json; other flags override it ("
        + "; ".join(f"{n}: {p.summary}" for n, p in presets.PRESETS.items())
        + ")",
    )
    flags.add_dataclass_flags(p, cfg.ModelConfig)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("prepare", help="scan a dataset and write its parquet manifest")
    p.add_argument("dataset", help="dataset root (MUSDB18-HQ layout, or one pool of tracks)")
    p.add_argument("--out", default=None, help="manifest URL (default: DATASET/manifest.parquet)")
    p.add_argument("--strict", action="store_true", help="fail on any broken track")
    p.add_argument("--seed", type=int, default=0, help="seed of carved validation/test splits")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train the session's model on a dataset with Ray Train")
    p.add_argument("session", help="session folder with model.json (local path or URL)")
    p.add_argument("dataset", help="dataset root (MUSDB18-HQ layout) or a prepared manifest")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint, if one exists"
    )
    p.add_argument("--display", action="store_true", help="print the trainer config")
    p.add_argument(
        "--targets",
        default=None,
        help="train one model per target side by side into SESSION/<target>/ (comma-separated "
        "stems, or 'all': every stem of the dataset); SESSION is then a bundle for separate/test",
    )
    p.add_argument(
        "--init-from",
        "--init_from",
        dest="init_from",
        default=None,
        help="fine-tune: start from this model's weights (a model, session or bundle URL, or a "
        "name in the model index), with a fresh optimizer; --resume still continues a run",
    )
    _add_model_index(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    p.add_argument(
        "--metrics-port",
        "--metrics_port",
        dest="metrics_port",
        type=int,
        default=None,
        help="serve per-epoch Prometheus metrics on this port",
    )
    p.add_argument("--pushgateway", default=None, help="push per-epoch metrics to this gateway")
    flags.add_dataclass_flags(p, cfg.TrainerConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "tune", help="sweep hyperparameters with Ray Tune, each trial a Ray Train run"
    )
    flags.add_dataclass_flags(p, cfg.SweepConfig)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("test", help="separate and score the test split (writes eval.csv)")
    flags.add_dataclass_flags(p, cfg.EvalConfig)
    p.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    p.set_defaults(func=_cmd_test)

    from auralflow_dist.separate import add_arguments

    p = sub.add_parser("separate", help="separate every audio file under a URL (Ray batch job)")
    add_arguments(p)
    p.set_defaults(func=_cmd_separate)

    p = sub.add_parser(
        "make-dataset",
        help="write a MUSDB18-HQ-layout dataset: generated songs, or MIDI songs rendered by part",
    )
    p.add_argument("url")
    p.add_argument(
        "--source",
        choices=("generated", "midi"),
        default="generated",
        help="generated: synthetic songs; midi: General MIDI songs rendered with fluidsynth, "
        "each stem a group of channels (default: generated)",
    )
    p.add_argument("--tracks", type=int, default=None, help="generated: how many (default 8)")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="generated: each track's length (default 20); midi: keep each song's first seconds "
        "(default: whole songs)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="generated: the dataset's seed (default 0)"
    )
    p.add_argument(
        "--midi",
        nargs="+",
        default=None,
        metavar="FILE",
        help="midi: the songs to render (default: Debian's planetblupi-music-midi songs)",
    )
    p.add_argument("--soundfont", default=None, help="midi: a GM soundfont (default: FluidR3_GM)")
    p.add_argument("--sample-rate", "--sample_rate", dest="sample_rate", type=int, default=44100)
    p.add_argument("--format", choices=("wav", "flac", "ogg", "mp3"), default="wav")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser(
        "download", help="fetch a model by its name in a model index, or copy one from any URL"
    )
    p.add_argument("model", help="a name in the model index, or a model folder's URL")
    p.add_argument("--save", required=True)
    p.add_argument("--sha256", default=None, help="with a URL: expected SHA-256 of weights.pt")
    _add_model_index(p)
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("export", help="a trained network as TorchScript or ONNX, with its STFT")
    p.add_argument("model", help="a model, session or bundle URL, or a name in the model index")
    p.add_argument("--format", choices=("torchscript", "onnx"), required=True)
    p.add_argument("--save", required=True, help="output folder (a bundle: one per target)")
    _add_model_index(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("index", help="add a model or bundle to a model index, with its checksums")
    p.add_argument("model", help="a model, session or bundle folder (any URL)")
    p.add_argument("--name", required=True, help="the name it is found by")
    p.add_argument(
        "--save", required=True, help="the index file (JSON, any URL): created or updated"
    )
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("demo", help="run the main job end to end on generated data")
    p.add_argument("--workdir", default="demo_output")
    p.add_argument("--quick", action="store_true", help="a smaller setting (used by the tests)")
    p.set_defaults(func=_cmd_demo)
    return parser


# Commands that run for long on Ray, which SIGTERM or SIGINT stops together with the Ray they
# started; True where --resume continues them.
STOPPABLE = {"train": True, "tune": True, "test": False, "separate": False, "demo": False}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _run_stoppably(func: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> None:
    """Run the command with SIGTERM and SIGINT stopping it (`_stop`).

    Tune's own SIGINT handler (which would end the sweep as if it had finished) is turned off,
    and `runtime.connect` keeps these handlers where ``ray.init`` would make SIGTERM a bare exit
    (no word of what stopped, no stop of the local Ray it started).
    """
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    stop = functools.partial(_stop, args.command)
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def arm() -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, stop)

    arm()
    try:
        if args.command == "train":
            _on_a_thread(args, arm)
        else:
            func(args)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _NotOnMainThread(logging.Filter):
    """``ray.init`` off the main thread warns that it set no SIGTERM handler: ours is set."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _on_a_thread(args: argparse.Namespace, arm: Callable[[], None]) -> None:
    """Run ``args.func`` on a worker thread while the main thread waits for it (or a signal).

    Ray Train replaces a main thread's SIGINT handler with one that aborts the run and returns
    as if it had finished; off the main thread it leaves signals alone. ``ray.init`` there puts
    Ray's fatal-signal handler (which aborts the process) over ours: `arm` puts ours back.
    """
    import ray

    failure: list[BaseException] = []

    def work() -> None:
        try:
            args.func(args)
        except BaseException as err:  # re-raised on the main thread
            failure.append(err)

    quiet = _NotOnMainThread()
    logging.getLogger("ray._private.worker").addFilter(quiet)
    thread = threading.Thread(target=work, name=f"auralflow-{args.command}", daemon=True)
    armed = ray.is_initialized()
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
            if not armed and ray.is_initialized():
                arm()
                armed = True
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
    if failure:
        raise failure[0]


def _stop(command: str, signum: int, frame: object) -> None:
    """Say what stopped and how to go on, stop the Ray this process started, and exit.

    It runs as the signal handler, often amid a Ray call, so it does not re-enter Ray: a local
    instance's processes are ended directly, and on a cluster the job's actors and tasks end
    when its driver goes. Every write of ours is atomic: nothing needs finalising.
    """
    from auralflow_dist.runtime import end_local_ray

    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)  # a second signal must not cut the stop short
    then = "; run it again with --resume to continue" if STOPPABLE[command] else ""
    print(
        f"auralflow {command}: stopped by {signal.Signals(signum).name}{then}",
        file=sys.stderr,
        flush=True,
    )
    try:
        end_local_ray()
        sys.stdout.flush()
    finally:  # whatever ending the processes met (one vanishing mid-walk), the exit stands
        os._exit(128 + signum)


def main(argv: Sequence[str] | None = None, filter_output: bool | None = None) -> int:
    """The command line. ``filter_output`` (default: when run as a command, ``argv`` None)
    drops Ray's routine lines that its C++ core writes straight to stderr (`ray_logs`)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if filter_output if filter_output is not None else argv is None:
        from auralflow_dist.ray_logs import filter_stderr

        filter_stderr()
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        if args.command in STOPPABLE and threading.current_thread() is threading.main_thread():
            _run_stoppably(func, args)
        else:
            func(args)
    except ConfigError as err:
        print(f"auralflow {args.command}: error: {flags.explain(err)}", file=sys.stderr)
        return 2
    except AuralflowError as err:
        print(f"auralflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
