"""What the stage entry points share: their common arguments and one way of reporting errors.

Every stage's ``main(argv=None) -> int`` parses its arguments with :func:`parser`, then hands its work to
:func:`run`. A :class:`~deeplab.errors.PipelineError` (bad params, missing or broken data, a failed
download, ...) is printed as one line, ``pipeline.<stage>: error: <what, where, what to do>``, and the stage
exits with the error's code (2 bad input, 1 runtime failure, 128 + N stopped by signal N); anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from deeplab.config import Params, load_params
from deeplab.errors import PipelineError


def parser(module: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage takes: ``--preset`` and ``--params``."""
    result = argparse.ArgumentParser(prog=f"python -m pipeline.{module}", description=doc.splitlines()[0])
    result.add_argument("--preset", required=True, help="preset of params/presets.yaml, e.g. full or smoke")
    result.add_argument("--params", default="params", help="folder of the parameter files (default: params)")
    return result


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
