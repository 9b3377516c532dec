"""Real-time factor of ``separate()`` beside the network's forward pass alone, same windows.

The whole path (integer scaling, windowing, STFT, masking, iSTFT, overlap-add) should cost
little more than the network itself: on CPU at most 1.25x the forward pass alone. On a GPU the
same is measured with bf16/fp16 autocast. Prints ratios; absolute times only mean something on
a GPU.

    python -m bench.separation_speed [--seconds 60] [--models ...] [--device cuda] [--amp]
"""

from __future__ import annotations

import argparse
import time

import torch

from auralflow_dist.audio.windowing import frame_signal
from auralflow_dist.config import MODEL_TYPES, ModelConfig
from auralflow_dist.models.separator import Separator, amp_dtype


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: cuDNN autotuning, allocator, lazy inits
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure(
    model_type: str, seconds: float, device: torch.device, amp: bool, batch_size: int, repeats: int
) -> dict[str, float]:
    config = ModelConfig(model_type=model_type, num_channels=2).validate()
    model = Separator(config, device=device, use_amp=amp)
    model.network.eval()
    audio = torch.randn(2, int(seconds * config.sample_rate)) * 0.1
    padding = 200
    window = config.num_samples
    frames, _ = frame_signal(audio, window, window - padding)
    mags = [model.stft(b.to(device)).abs() for b in frames.split(batch_size)]

    def forward_only() -> None:
        with torch.inference_mode(), model.autocast():
            for mag in mags:
                model.network(mag)

    def whole_path() -> None:
        model.separate(audio, padding=padding, batch_size=batch_size)

    t_net = _timed(forward_only, device, repeats)
    t_all = _timed(whole_path, device, repeats)
    return {"net_rtf": seconds / t_net, "all_rtf": seconds / t_all, "overhead": t_all / t_net}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--models", nargs="+", default=list(MODEL_TYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16/fp16 autocast (GPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    precision = str(amp_dtype(device)).replace("torch.", "") if args.amp else "float32"
    print(f"device {name}, {precision}, {args.seconds:.0f} s stereo clip, batch {args.batch_size}")
    print(f"{'model':<22}{'forward xRT':>14}{'separate xRT':>14}{'whole/forward':>15}")
    for model_type in args.models:
        r = measure(model_type, args.seconds, device, args.amp, args.batch_size, args.repeats)
        print(f"{model_type:<22}{r['net_rtf']:>14.1f}{r['all_rtf']:>14.1f}{r['overhead']:>15.2f}")


if __name__ == "__main__":
    main()
