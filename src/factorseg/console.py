"""Where tables and summaries are printed: a rich console that never cuts them when piped.

Without a terminal rich assumes 80 columns and shortens (``…``) or folds table cells to fit them, so that
``factorseg evaluate ... | tee scores.txt`` lost the right-hand metrics. :func:`output_console` prints at the
terminal's width on a terminal and at a width no table reaches otherwise (files, pipes, CI logs), without
colour codes.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console

__all__ = ["PIPE_WIDTH", "is_terminal", "output_console"]

#: Columns assumed when the output is not a terminal: wide enough for any table factorseg prints.
PIPE_WIDTH = 10_000


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stdout) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def output_console(file: TextIO | None = None) -> Console:
    """A console on ``file`` (default: stdout) that prints tables in full when it is not a terminal."""
    if is_terminal(file):
        return Console(file=file)
    return Console(file=file, width=PIPE_WIDTH, color_system=None)
