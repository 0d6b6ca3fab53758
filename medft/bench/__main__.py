"""`python -m medft.bench`: the benchmark's command line (`medft.bench.cli`)."""

import sys

from medft.bench.cli import main

main(sys.argv[1:])
