"""`ray job submit` entrypoint for evaluation: the same flags as `auralflow test`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/evaluate.py s3://bucket/sessions/vocals s3://bucket/musdb18hq --workers 8 \
        --gpus-per-worker 1 --bsseval
"""

import sys

from auralflow_dist import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(["test", *(sys.argv[1:] if argv is None else argv)], filter_output=argv is None)


if __name__ == "__main__":
    sys.exit(main())
