"""`python -m medft`: the medft command line (`medft.cli`), as the `medft` console script."""

from medft.cli import run

run()
