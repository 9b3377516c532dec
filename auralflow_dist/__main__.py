import sys

from auralflow_dist.cli import main

sys.exit(main())
