"""``python -m factorseg``: the ``factorseg`` command."""

from factorseg.cli import run

run()
