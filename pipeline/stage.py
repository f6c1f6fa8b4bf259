"""What the entry points share: their common arguments, one way of writing generated files, and one way
of reporting errors.

Every ``pipeline/*`` tool's ``main(argv=None) -> int`` parses its arguments with :func:`parser`, then hands
its work to :func:`run`. The same thing has the same option everywhere: ``--preset`` (required wherever a
preset matters: the full one and the smoke one differ by days of GPU time), ``--params``, ``--cell`` and
``--seed`` (:func:`add_run`), ``--out`` for a folder of outputs the user names, ``--multi-scale`` for the
multi-scale + flip protocol of params/evaluate.yaml. A tool that generates files writes them by default and
takes ``--check`` to write nothing and exit 1 when any differs (:func:`write_or_check`). A :class:`~deeplab.errors.PipelineError` (bad params, missing or broken data, a failed
download, ...) is printed as one line, ``pipeline.<stage>: error: <what, where, what to do>``, and the stage
exits with the error's code (2 bad input, 1 runtime failure, 128 + N stopped by signal N); anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Mapping

from deeplab import atomic

from deeplab.config import Params, load_params
from deeplab.errors import PipelineError


def parser(module: str, doc: str, preset: bool = True, params: bool = True, **kwargs: str) -> argparse.ArgumentParser:
    """An argument parser with ``--preset`` (where the tool works on one preset) and ``--params`` (where it
    reads them)."""
    result = argparse.ArgumentParser(prog=f"python -m pipeline.{module}", description=doc.splitlines()[0], **kwargs)
    if preset:
        result.add_argument("--preset", required=True, help="preset of params/presets.yaml, e.g. full or smoke")
    if params:
        result.add_argument("--params", default="params", help="folder of the parameter files (default: params)")
    return result


def add_run(result: argparse.ArgumentParser, required: bool = True) -> None:
    """``--cell`` and ``--seed``: one training run of a cell."""
    result.add_argument("--cell", required=required, help="cell id, e.g. voc-r50-os8 (params/cells.yaml)")
    result.add_argument("--seed", type=int, default=None,
                        help="one of the cell's seeds (presets.<preset>.seeds; default: train.seed)")


def add_check(result: argparse.ArgumentParser) -> None:
    """``--check``, for a tool that generates files."""
    result.add_argument("--check", action="store_true", help="write nothing; exit 1 if any output is out of date")


class StaleOutput(PipelineError):
    """``--check`` found a generated file that differs from what its sources give."""

    exit_code = 1


def write_or_check(module: str, files: Mapping[Path, str], check: bool, fix: str) -> None:
    """Write each generated file that differs (atomically), or with ``check`` raise :class:`StaleOutput`
    naming them and the command ``fix`` that regenerates them."""
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
    if check:
        if stale:
            raise StaleOutput(f"out of date: {', '.join(map(str, stale))}; regenerate with `{fix}`")
        print(f"pipeline.{module}: {', '.join(map(str, files))} up to date")
        return
    for path in stale:
        atomic.write_text(path, files[path])
    print(f"pipeline.{module}: wrote {', '.join(map(str, stale)) or 'nothing (all up to date)'}")


def params(args: argparse.Namespace) -> Params:
    """The validated parameters the arguments point at (their preset checked too)."""
    loaded = load_params(args.params)
    loaded.preset(args.preset)
    return loaded


def run(module: str, body: Callable[[], int | None]) -> int:
    """Run a stage's work; report a user-fixable error on one line and return the exit code."""
    try:
        return body() or 0
    except PipelineError as error:
        print(f"pipeline.{module}: error: {message(error)}", file=sys.stderr)
        return error.exit_code


def message(error: PipelineError) -> str:
    """The error's own message, also when a DataLoader worker raised it: torch re-raises it in the main
    process with the worker's traceback prepended, which a user-fixable error does not need."""
    text = str(error)
    marker = f"{type(error).__module__}.{type(error).__qualname__}: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text
