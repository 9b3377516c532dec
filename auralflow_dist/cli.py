"""The ``auralflow`` command: parse flags, build a config, call the library. Nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence

from auralflow_dist import config as cfg
from auralflow_dist import flags
from auralflow_dist.errors import AuralflowError, ConfigError

MODEL_HELP = {
    "num_channels": "1 for mono, 2 for stereo",
    "hidden_channels": "initial number of convolution filters",
    "sample_length": "seconds per training chunk / separation window",
    "dropout_p": "dropout probability",
    "leak_factor": "negative slope when --mask-act-fn leaky_relu",
    "normalize_input": "learn per-bin input centering/scaling",
    "normalize_output": "learn per-bin output centering/scaling",
    "mask_act_fn": "mask activation: " + " | ".join(cfg.MASK_ACTIVATIONS),
    "num_fft": "FFT size",
    "window_size": "STFT window length",
    "hop_length": "STFT hop length",
    "recurrent_depth": "number of LSTM layers",
    "hidden_size": "LSTM hidden size",
    "input_axis": "LSTM recurs over 1: time, 0: frequency",
}


TRAIN_HELP = {
    "max_tracks": "max number of training tracks drawn from",
    "max_samples": "chunks per epoch",
    "batch_size": "batch size per worker",
    "num_workers": "concurrent decoding tasks of the Ray Data ingest",
    "persistent_workers": "keep decoded validation chunks materialised across epochs",
    "pin_memory": "pin host batches for faster GPU copies",
    "pre_fetch": "batches prefetched per worker",
    "lr": "learning rate",
    "criterion": "loss: " + " | ".join(cfg.CRITERIA),
    "use_amp": "mixed precision (bf16 where supported, else fp16 with a grad scaler)",
    "clip_grad": "clip the gradient norm at --max-grad-norm",
    "scale_grad": "use a gradient scaler (implied by fp16 AMP)",
    "stop_patience": "epochs without improvement before the LR drops (a plateau)",
    "max_plateaus": "plateaus before training stops",
    "min_delta": "validation-loss improvement that counts",
    "lr_lstm": "learning rate of LSTM bottleneck parameters",
    "image_freq": "epochs between spectrogram/waveform images",
    "silent": "suppress the per-epoch progress line",
    "storage": "where checkpoints go (default: the session folder)",
    "max_failures": "worker/node failures to recover from before giving up",
    "gpus_per_worker": "GPUs per training worker (0: CPU with gloo)",
}


def _cmd_config(args: argparse.Namespace) -> None:
    from auralflow_dist.session import write_model_config

    values = flags.given(args, cfg.ModelConfig)
    chosen = [t for t in cfg.MUSDB_TARGETS if getattr(args, f"target_{t}")]
    if len(chosen) + (args.target is not None) > 1:
        raise ConfigError("target", "choose one target")
    if chosen:
        values["target"] = chosen[0]
    values["model_type"] = args.model_type
    model_config = cfg.from_dict(cfg.ModelConfig, values)
    path = write_model_config(args.save, model_config, overwrite=args.overwrite)
    print(f"wrote {path}")
    if args.display:
        from auralflow_dist.models import count_parameters
        from auralflow_dist.models.registry import build_network

        print(cfg.to_json(model_config), end="")
        params = count_parameters(build_network(model_config))
        print(f"{model_config.model_type}: {params:,} parameters ({params / 1e6:.1f}M)")


def _parse_workers(text: str) -> tuple[int, int]:
    """``N`` or ``MIN:MAX`` (elastic)."""
    try:
        low, _, high = text.partition(":")
        return int(low), int(high or low)
    except ValueError:
        raise ConfigError("workers", f"expected N or MIN:MAX, got {text!r}") from None


def _trainer_config(args: argparse.Namespace) -> cfg.TrainerConfig:
    """The session's trainer.json (if any), else the defaults; the flags given override either."""
    from auralflow_dist.session import read_trainer_config

    base = read_trainer_config(args.session)
    values = {**(dataclasses.asdict(base) if base else {}), **flags.given(args, cfg.TrainerConfig)}
    if args.workers is not None:
        values["workers_min"], values["workers_max"] = _parse_workers(args.workers)
    return cfg.from_dict(cfg.TrainerConfig, values)


def _cmd_train(args: argparse.Namespace) -> None:
    from auralflow_dist.runtime import connect
    from auralflow_dist.session import read_model_config
    from auralflow_dist.train.trainer import train

    model_config = read_model_config(args.session)
    trainer_config = _trainer_config(args)
    if args.display:
        print(cfg.to_json(trainer_config), end="")
    connect(args.address, trainer_config.workers_max * trainer_config.cpus_per_worker)
    result = train(
        args.session,
        args.dataset,
        model_config,
        trainer_config,
        resume=args.resume,
        metrics_port=args.metrics_port,
        pushgateway=args.pushgateway,
    )
    print(result.summary())


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
    from auralflow_dist.evaluate import EvalConfig, evaluate
    from auralflow_dist.runtime import connect

    if args.workers < 1:
        raise ConfigError("workers", "must be at least 1")
    config = EvalConfig(
        session=args.session,
        dataset=args.dataset,
        save=args.save,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        bsseval=args.bsseval,
        padding=args.padding,
        batch_size=args.batch_size,
        max_tracks=args.max_tracks,
    )
    connect(args.address, args.workers)
    url, rows = evaluate(config)
    median = next(r for r in rows if r["track"] == "median")
    print(
        f"median target SI-SDR {median.get('target_si_sdr', float('nan')):+.2f} dB "
        f"(improvement {median.get('target_si_sdri', float('nan')):+.2f} dB) over "
        f"{len(rows) - 2} tracks; wrote {url}"
    )


def _cmd_separate(args: argparse.Namespace) -> None:
    from auralflow_dist.separate import from_args, run_separation

    print(run_separation(from_args(args)).describe())


def _cmd_tune(args: argparse.Namespace) -> None:
    from auralflow_dist.tune import SweepConfig, run_sweep

    sweep = SweepConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SweepConfig)})
    print(run_sweep(sweep).text())


def _cmd_make_dataset(args: argparse.Namespace) -> None:
    from auralflow_dist.data.generate import write_dataset

    def progress(done: int, total: int) -> None:
        print(f"\rgenerated {done}/{total} tracks", end="" if done < total else "\n", flush=True)

    tracks = write_dataset(
        args.url,
        tracks=args.tracks,
        seconds=args.seconds,
        seed=args.seed,
        sample_rate=args.sample_rate,
        fmt=args.format,
        progress=progress,
    )
    print(f"wrote {len(tracks)} tracks under {args.url}")


def _cmd_download(args: argparse.Namespace) -> None:
    from auralflow_dist.models.registry import download

    print(f"downloaded to {download(args.url, args.save, sha256=args.sha256)}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from auralflow_dist.demo import run_demo

    run_demo(args.workdir, quick=args.quick)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auralflow",
        description="Train, tune, evaluate and run music source separation models on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "config", help="write a model configuration (model.json) to a session folder"
    )
    p.add_argument("model_type", choices=cfg.MODEL_TYPES)
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
    flags.add_dataclass_flags(
        p,
        cfg.ModelConfig,
        skip=("model_type",),
        help_text=MODEL_HELP,
        aliases={"hidden_channels": ["num_hidden_channels"]},
    )
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
        "--workers",
        default=None,
        help="training workers: N, or MIN:MAX to train elastically (default: 1)",
    )
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
    flags.add_dataclass_flags(
        p,
        cfg.TrainerConfig,
        skip=("workers_min", "workers_max"),
        help_text=TRAIN_HELP,
        aliases={"view_wav": ["view_wave"]},
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "tune", help="sweep hyperparameters with Ray Tune, each trial a Ray Train run"
    )
    p.add_argument(
        "sweep_url",
        metavar="sweep",
        help="sweep folder (local path or URL): trials/, results.csv, best/",
    )
    p.add_argument(
        "dataset_url",
        metavar="dataset",
        help="dataset root (MUSDB18-HQ layout) or a prepared manifest",
    )
    p.add_argument(
        "--space",
        default=None,
        help="search space file (.json/.yaml); a resumed sweep reuses its own",
    )
    p.add_argument(
        "--num-samples",
        "--num_samples",
        dest="num_samples",
        type=int,
        default=4,
        help="samples drawn from the space; grid entries multiply them (default: 4)",
    )
    p.add_argument(
        "--scheduler",
        choices=("asha", "pbt", "fifo"),
        default="asha",
        help="asha: stop weak trials early; pbt: population based training; fifo: none",
    )
    p.add_argument(
        "--search",
        choices=("random", "grid", "optuna"),
        default="random",
        help="random sampling, grid (choices become grid axes) or optuna",
    )
    p.add_argument(
        "--metric",
        choices=("val_si_sdr", "val_si_sdri", "val_loss", "train_loss"),
        default="val_si_sdr",
        help="what the sweep optimises (default: val_si_sdr)",
    )
    p.add_argument(
        "--mode",
        choices=("max", "min"),
        default=None,
        help="default: the metric's better direction",
    )
    p.add_argument(
        "--max-concurrent",
        "--max_concurrent",
        dest="max_concurrent",
        type=int,
        default=0,
        help="trials at once (default 0: as many as the cluster fits)",
    )
    p.add_argument(
        "--workers-per-trial",
        "--workers_per_trial",
        dest="workers_per_trial",
        type=int,
        default=1,
        help="Ray Train workers per trial (default: 1)",
    )
    p.add_argument(
        "--gpus-per-worker",
        "--gpus_per_worker",
        dest="gpus_per_worker",
        type=float,
        default=0.0,
        help="GPUs per training worker (default: 0, CPU)",
    )
    p.add_argument(
        "--max-epochs",
        "--max_epochs",
        dest="max_epochs",
        type=int,
        default=None,
        help="epochs per trial (default: the base trainer.json's)",
    )
    p.add_argument(
        "--grace-period",
        "--grace_period",
        dest="grace_period",
        type=int,
        default=1,
        help="asha: epochs every trial runs before it can be stopped",
    )
    p.add_argument(
        "--perturbation-interval",
        "--perturbation_interval",
        dest="perturbation_interval",
        type=int,
        default=1,
        help="pbt: epochs between exploit/explore steps",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the search")
    p.add_argument(
        "--base",
        default=None,
        help="session whose model.json/trainer.json the trials start from "
        "(default: the sweep folder's own, else the defaults)",
    )
    p.add_argument(
        "--model-type",
        "--model_type",
        dest="model_type",
        choices=cfg.MODEL_TYPES,
        default=None,
        help="override the base model's type",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep; finished trials are kept",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("test", help="separate and score the test split (writes eval.csv)")
    p.add_argument("session", help="session folder or model directory")
    p.add_argument("dataset", help="dataset root or prepared manifest")
    p.add_argument("--save", default=None, help="metrics CSV URL (default: SESSION/eval.csv)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors separating tracks")
    p.add_argument(
        "--gpus-per-worker", "--gpus_per_worker", dest="gpus_per_worker", type=float, default=0.0
    )
    p.add_argument(
        "--bsseval",
        action="store_true",
        help="add museval's BSSEval v4 SDR (1 s frames, median over frames)",
    )
    p.add_argument("--padding", type=int, default=200, help="overlap between windows (samples)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    p.add_argument("--max-tracks", "--max_tracks", dest="max_tracks", type=int, default=None)
    p.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    p.set_defaults(func=_cmd_test)

    from auralflow_dist.separate import add_arguments

    p = sub.add_parser("separate", help="separate every audio file under a URL (Ray batch job)")
    add_arguments(p)
    p.set_defaults(func=_cmd_separate)

    p = sub.add_parser("make-dataset", help="write a generated MUSDB18-HQ-layout dataset")
    p.add_argument("url")
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rate", "--sample_rate", dest="sample_rate", type=int, default=44100)
    p.add_argument("--format", choices=("wav", "flac", "ogg", "mp3"), default="wav")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser("download", help="copy a model directory from any URL, checking its SHA-256")
    p.add_argument("url")
    p.add_argument("--save", required=True)
    p.add_argument("--sha256", default=None, help="expected SHA-256 of weights.pt")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("demo", help="run the main job end to end on generated data")
    p.add_argument("--workdir", default="demo_output")
    p.add_argument("--quick", action="store_true", help="a smaller setting (used by the tests)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
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
