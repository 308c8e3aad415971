"""What every stage script shares: the `--params` argument, the run's thread count, and turning user
mistakes into one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from language_entropy.errors import ParamsError, UserError
from language_entropy.params import Params, load_params
from language_entropy.threads import apply_threads


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def stage_params(args: argparse.Namespace) -> Params:
    """The validated params of a stage, with the run's thread count (`train.threads`) fixed before any
    work; call it before importing torch or numpy (stage scripts import the pipeline after it)."""
    params = load_params(args.params)
    apply_threads(params.train.threads)
    return params


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a ParamsError or UserError becomes `error: <one line>` and exit status 2."""
    try:
        main()
    except (ParamsError, UserError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
