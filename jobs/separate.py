"""`ray job submit` entrypoint for bulk separation: the same flags as `auralflow separate`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/separate.py s3://bucket/sessions/vocals s3://bucket/albums \
        --save s3://bucket/separated --residual --workers 8 --gpus-per-worker 1

Prints progress while files stream through the workers, then where the stems and the
``_results`` table went. A user error (bad URL, flag, checkpoint) is one line and exit code 2.
"""

import sys

from auralflow_dist import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        ["separate", *(sys.argv[1:] if argv is None else argv)], filter_output=argv is None
    )


if __name__ == "__main__":
    sys.exit(main())
