"""What every stage script shares: the `--params` argument and turning user mistakes into one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from language_entropy.errors import ParamsError, UserError


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a ParamsError or UserError becomes `error: <one line>` and exit status 2."""
    try:
        main()
    except (ParamsError, UserError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
