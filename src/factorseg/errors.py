"""Problems with user input: errors the CLI reports as one line and exit status 2, and warnings as one line.

Plain Python only (no torch, nibabel or numpy), so that ``import factorseg`` and the CLI's error handling
stay light.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["InputError", "InputWarning", "join_problems"]


class InputError(ValueError):
    """A user-supplied file, folder or option is unusable; the message says which and why."""


class InputWarning(UserWarning):
    """A user file was usable only after an adjustment (e.g. resampled onto another channel's grid).

    The CLI prints these as one ``factorseg: warning: ...`` line.
    """


def join_problems(problems: Sequence[str], shown: int = 5, named: int = 20) -> str:
    """One line for a list of one-line problems: the problem itself, or ``N unusable inputs: a; b; ...``.

    The first ``shown`` problems are quoted in full and the next ``named`` only by what they are about (the text
    before their first ``": "``, normally the file), so that the line names every bad input of any sensible
    batch; beyond that it ends with how many more there are.
    """
    problems = list(dict.fromkeys(problems))  # the same problem found twice is one problem
    if len(problems) == 1:
        return problems[0]
    line = f"{len(problems)} unusable inputs: " + "; ".join(problems[:shown])
    rest = problems[shown:]
    if rest:
        names = ", ".join(p.split(": ", 1)[0] for p in rest[:named])
        beyond = f" and {len(rest) - named} more" if len(rest) > named else ""
        line += f"; and {len(rest)} more: {names}{beyond}"
    return line
