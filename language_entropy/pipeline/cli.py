"""What every stage script shares: the `--params` argument, the run's thread count, and turning user
mistakes and interrupts into one line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from language_entropy.errors import ParamsError, UserError
from language_entropy.params import Params, load_params
from language_entropy.threads import apply_threads


class StageInterrupted(BaseException):
    """SIGINT or SIGTERM arrived during a stage (a BaseException, as KeyboardInterrupt: no `except Exception`
    on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


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


def _interrupted_line(signum: int) -> str:
    return (f"{Path(sys.argv[0]).stem.replace('_', '-')} interrupted by {signal.Signals(signum).name}: stopped, "
            "no output half-written (what was there before is intact)")


def _inside_an_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum, frame):
    if _inside_an_import(frame):
        # An exception in the middle of a module's import can leave it half-initialised, and some libraries
        # import optional parts under a bare `except:` and go on with the broken module (an interrupt during
        # numpy's import then ended in a RecursionError seconds later). Nothing is being written during an
        # import; an MLflow run a lazy import interrupts is marked FAILED by the next stage's start.
        print(_interrupted_line(signum), file=sys.stderr, flush=True)
        os._exit(128 + signum)
    raise StageInterrupted(signum)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(). A ParamsError or UserError becomes `error: <one line>` and exit status 2.
    SIGINT/SIGTERM, from the first line on (imports, MLflow's set-up, the work), stop it with one line and
    exit status 128 + signal: outputs are written as a set (`outputs.output_set`), so the previous ones stay.
    The train loop takes the signals over while it runs (a checkpoint first); `guards.interruptible` ends an
    open MLflow run KILLED on the way out. SIGINT in the interpreter's first ~0.1 s, before this is called,
    still gets Python's own KeyboardInterrupt."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        main()
    except (ParamsError, UserError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except StageInterrupted as stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C does not interrupt the way out
        print(_interrupted_line(stop.signum), file=sys.stderr)
        # the clean-up is done (outputs discarded, the MLflow run ended KILLED): skip the interpreter's
        # finalisation, which after torch and MLflow takes about a second
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + stop.signum)
