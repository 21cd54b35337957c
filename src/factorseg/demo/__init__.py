"""The demo (``factorseg demo``): synthetic BraTS-like data, a short training, predictions, scores,
NMF component maps and a self-contained HTML report.

* :mod:`factorseg.demo.pipeline`: :func:`run_demo` and its steps;
* :mod:`factorseg.demo.report`: the figures and ``report.html``.
"""

from __future__ import annotations

from factorseg._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {"pipeline": ("DemoResult", "run_demo")})
