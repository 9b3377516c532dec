"""`ray job submit` entrypoint for training: the same flags as `auralflow train`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train.py s3://bucket/sessions/vocals s3://bucket/musdb18hq --workers 8 \
        --gpus-per-worker 1 --use-amp
"""

import sys

from auralflow_dist import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        ["train", *(sys.argv[1:] if argv is None else argv)], filter_output=argv is None
    )


if __name__ == "__main__":
    sys.exit(main())
