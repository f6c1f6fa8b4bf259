"""The one base class of every error a user can fix.

A :class:`PipelineError` message says what is wrong, where (file, key, line) and what to do; the stage
entry points print it on one line, without a traceback, and exit with its ``exit_code``. Anything else that
escapes a stage is a bug and keeps its traceback.
"""
from __future__ import annotations


class PipelineError(Exception):
    """A problem with the user's input, data or environment; the message names the fix."""

    exit_code = 2  # bad input (params, data, arguments); runtime failures (network, NaN) use 1
