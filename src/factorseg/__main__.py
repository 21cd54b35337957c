"""``python -m factorseg``: the ``factorseg`` command."""

from factorseg.cli import main

raise SystemExit(main())
