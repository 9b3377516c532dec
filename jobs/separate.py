"""`ray job submit` entrypoint for bulk separation: the same flags as `auralflow separate`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/separate.py s3://bucket/sessions/vocals s3://bucket/albums \
        --save s3://bucket/separated --residual --workers 8 --gpus-per-worker 1

Prints progress while files stream through the workers, then where the stems and the
``_results`` table went. A user error (bad URL, flag, checkpoint) is one line and exit code 2.
"""

import argparse
import sys

from auralflow_dist import flags
from auralflow_dist.errors import AuralflowError, ConfigError
from auralflow_dist.separate import add_arguments, from_args, run_separation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jobs/separate.py",
        description="Separate every audio file under a URL with a trained model, on Ray.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        summary = run_separation(from_args(args))
    except ConfigError as err:
        print(f"separate: error: {flags.explain(err)}", file=sys.stderr)
        return 2
    except AuralflowError as err:
        print(f"separate: error: {err}", file=sys.stderr)
        return 2
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
