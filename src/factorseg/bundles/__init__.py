"""Trained models on disk: the bundle format, and the import of the authors' checkpoints into it.

* :mod:`factorseg.bundles.format`: a bundle is ``{"config": plain data, "state_dict": tensors}``, written
  atomically and read with ``torch.load(weights_only=True)`` (:func:`save_bundle`, :func:`read_bundle`,
  :func:`build_model` from a config through the :mod:`factorseg.models` registry, the weight checks);
  loading for prediction goes through :func:`factorseg.inference.load_model`;
* :mod:`factorseg.bundles.official`: ``factorseg import-checkpoint``: the authors' Lightning checkpoints read
  with inert placeholders (nothing in them runs), the architecture inferred from the weights.
"""

from __future__ import annotations

from factorseg._lazy import lazy_exports

_MODULES = {
    "format": ("build_model", "bundle_config", "read_bundle", "save_bundle"),
    "official": ("import_official_checkpoint",),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
