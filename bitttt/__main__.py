"""`python -m bitttt COMMAND ...`: the same as the `bitttt` command (bitttt.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
