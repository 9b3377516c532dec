"""`ray job submit` entrypoint for hyperparameter sweeps: the same flags as `auralflow tune`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/tune.py s3://bucket/sweeps/vocals s3://bucket/musdb18hq \
        --space s3://bucket/sweeps/space.yaml --num-samples 32 --scheduler asha \
        --workers-per-trial 2 --gpus-per-worker 1 --max-epochs 50

Resume an interrupted sweep with the same first two arguments and --resume.
"""

import sys

from auralflow_dist import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(["tune", *(sys.argv[1:] if argv is None else argv)], filter_output=argv is None)


if __name__ == "__main__":
    sys.exit(main())
