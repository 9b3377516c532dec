"""``python -m bench`` (``make bench``): every benchmark in turn, each printing its own ratios."""

import runpy
import sys

BENCHMARKS = (
    ("bench.separation_speed", ["--models", "SpectrogramNetSimple", "MaskInference"]),
    ("bench.data_throughput", []),
    ("bench.train_throughput", []),
    ("bench.separate_throughput", []),
    ("bench.all_stems", []),
    ("bench.shared_batches", []),
    ("bench.ingest_idle", []),
    ("bench.heap", []),
    ("bench.peers", []),
)

if __name__ == "__main__":
    for module, args in BENCHMARKS:
        print(f"\n### {module} {' '.join(args)}", flush=True)
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__")
