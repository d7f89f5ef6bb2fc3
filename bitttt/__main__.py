"""`python -m bitttt COMMAND ...`: the same as the `bitttt` command (bitttt.cli)."""
import sys

from .cli import main

sys.exit(main())
