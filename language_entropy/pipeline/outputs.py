"""A stage's outputs: checked before any work, written as a set.

`check_outputs` refuses, in one line naming the params key, an output path the stage could not write at
the end or DVC could not track: a directory where a file goes (or a file where a directory goes), a parent
that is a file or not writable, and, in a DVC repository, a path outside it or inside `.git/` or `.dvc/`.

`output_set` stages every output in a temporary directory beside its target and moves them all into place
only when each one is complete, with SIGINT and SIGTERM held back while they move: an interrupt or a failure
leaves the previous set (or nothing), never a mix. A staging directory left by a killed process carries
its pid (`.staging-<pid>-...`), so the next stage can tell it is stale (`stale_staging`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from language_entropy.errors import UserError

ADHOC_DIR = Path("reports") / "adhoc"  # git-ignored, outside every DVC out
STAGING_PREFIX = ".staging-"
_STAGING = re.compile(rf"{re.escape(STAGING_PREFIX)}(\d+)-.+")


def adhoc_folder(stage: str) -> Path:
    """A new folder for an ad-hoc run's files (evaluate with --samples, --base or --verbose; visualize with
    --base): never a pipeline output, so a debugging run cannot replace what DVC tracks."""
    return ADHOC_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-{stage}-{os.getpid()}"


def repository_root() -> Path | None:
    """The DVC repository the stage runs in (its working directory, as under `dvc repro`), else None."""
    cwd = Path.cwd()
    return cwd.resolve() if (cwd / ".dvc").is_dir() else None


def check_outputs(files: Iterable[tuple[str, Path]] = (), dirs: Iterable[tuple[str, Path]] = ()) -> None:
    """Refuse before any work, as one `UserError` naming the key, an output the stage could not write or DVC
    could not track. `files` and `dirs` are (params key, path) pairs."""
    root = repository_root()
    for kind, entries in (("file", files), ("directory", dirs)):
        for key, path in entries:
            problem = _output_problem(Path(path), kind, root)
            if problem is not None:
                raise UserError(f"{key}: {problem}")


def _output_problem(path: Path, kind: str, root: Path | None) -> str | None:
    if root is not None:
        resolved = (Path.cwd() / path).resolve()
        if not resolved.is_relative_to(root):
            return f"{path} is outside the repository ({root}): DVC cannot track an output there; use a path inside it"
        top = resolved.relative_to(root).parts[:1]
        if top in ((".git",), (".dvc",)):
            return f"{path} is inside {top[0]}/, where DVC cannot track an output; use another path"
    if kind == "file" and path.is_dir():
        return f"{path} is a directory, but the stage writes a file there: point it at a file path"
    if kind == "directory" and path.exists() and not path.is_dir():
        return f"{path} is a file, but the stage writes a directory there"
    for parent in (path, *path.parents) if kind == "directory" else path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{path} cannot be created: {parent} is a file"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{path} cannot be written: {parent} is not writable"
            return None
    return None


@contextmanager
def output_set(targets: Iterable[Path | str]) -> Iterator[Callable[[Path | str], Path]]:
    """Yield `staged(target)`, the temporary path to write each target to; when the block ends normally and
    every target was written, move them all into place (signals held back meanwhile); otherwise discard them."""
    targets = [Path(target) for target in targets]
    staging: dict[Path, Path] = {}
    try:
        for parent in dict.fromkeys(target.parent for target in targets):
            parent.mkdir(parents=True, exist_ok=True)
            staging[parent] = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=parent))

        def staged(target: Path | str) -> Path:
            target = Path(target)
            if target not in targets:
                raise KeyError(f"{target} is not one of this output set's targets {[str(t) for t in targets]}")
            return staging[target.parent] / target.name

        yield staged
        unwritten = [str(target) for target in targets if not staged(target).is_file()]
        if unwritten:
            raise RuntimeError(f"output set incomplete, nothing replaced: {unwritten} were not written")
        with _signals_held():
            for target in targets:
                os.replace(staged(target), target)
    finally:
        for directory in staging.values():
            shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside the block are delivered when it ends, to whatever handled them before.

    Python-level handlers (not a signal mask: torch's threads would take a masked signal) run between
    bytecodes of the main thread, so each os.replace completes and the set moves whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


def stale_staging(directories: Iterable[Path], alive: Callable[[int], bool]) -> list[Path]:
    """Staging directories in `directories` whose process has ended (killed while writing a set)."""
    stale = []
    for directory in directories:
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            match = _STAGING.fullmatch(entry.name)
            if match and entry.is_dir() and not alive(int(match.group(1))):
                stale.append(entry)
    return stale
