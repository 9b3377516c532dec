"""The ``auralflow`` command: parse flags, build a config, call the library. Nothing else."""

from __future__ import annotations

import argparse
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


def _cmd_make_dataset(args: argparse.Namespace) -> None:
    from auralflow_dist.data.generate import write_dataset

    def progress(done: int, total: int) -> None:
        print(f"\rgenerated {done}/{total} tracks", end="" if done < total else "\n", flush=True)

    tracks = write_dataset(args.url, tracks=args.tracks, seconds=args.seconds, seed=args.seed,
                           sample_rate=args.sample_rate, fmt=args.format, progress=progress)
    print(f"wrote {len(tracks)} tracks under {args.url}")


def _cmd_download(args: argparse.Namespace) -> None:
    from auralflow_dist.models.registry import download

    print(f"downloaded to {download(args.url, args.save, sha256=args.sha256)}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from auralflow_dist.demo import run_demo

    run_demo(args.workdir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auralflow",
        description="Train, tune, evaluate and run music source separation models on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="write a model configuration (model.json) to a session folder")
    p.add_argument("model_type", choices=cfg.MODEL_TYPES)
    p.add_argument("--save", default="my_model", help="session folder (local path or URL)")
    p.add_argument("--display", action="store_true", help="print the config and parameter count")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing model.json (the folder is never deleted)")
    for target in cfg.MUSDB_TARGETS:
        p.add_argument(f"--{target}", dest=f"target_{target}", action="store_true",
                       help=f"isolate {target}")
    flags.add_dataclass_flags(
        p, cfg.ModelConfig, skip=("model_type",), help_text=MODEL_HELP,
        aliases={"hidden_channels": ["num_hidden_channels"]},
    )
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("make-dataset", help="write a generated MUSDB18-HQ-layout dataset")
    p.add_argument("url")
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rate", "--sample_rate", dest="sample_rate", type=int, default=44100)
    p.add_argument("--format", choices=("wav", "flac"), default="wav")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser("download", help="copy a model directory from any URL, checking its SHA-256")
    p.add_argument("url")
    p.add_argument("--save", required=True)
    p.add_argument("--sha256", default=None, help="expected SHA-256 of weights.pt")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("demo", help="run the main job end to end on generated data")
    p.add_argument("--workdir", default="demo_output")
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
