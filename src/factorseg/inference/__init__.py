"""Inference: from a trained model to masks on each scan's own grid, and models for deployment.

* :mod:`factorseg.inference.loading`: :func:`load_model`, the one way in for bundles (``.pt``), Lightning
  checkpoints (``.ckpt``), ONNX / TorchScript exports and shipped names, giving a :class:`LoadedModel`
  (its config, and a runner);
* :mod:`factorseg.inference.runners`: the :class:`Runner` interface and its PyTorch, ONNX Runtime and
  TorchScript implementations (:func:`load_runner`);
* :mod:`factorseg.inference.pipeline`: :class:`SegmentationPredictor`, the sliding-window pipeline behind
  ``factorseg predict`` (preprocessing, Gaussian blending, flip TTA, ensembles, inversion, writing masks);
* :mod:`factorseg.inference.predictor`: :class:`Predictor`, its Python front end for one case at a time;
* :mod:`factorseg.inference.export`: ONNX / TorchScript export checked against PyTorch;
* :mod:`factorseg.inference.monai_bundle`: the MONAI bundle export (``factorseg export --format monai-bundle``).
"""

from __future__ import annotations

from factorseg._lazy import lazy_exports

_MODULES = {
    "loading": ("LoadedModel", "load_model", "shipped_models"),
    "runners": ("OnnxRunner", "Runner", "TorchRunner", "TorchScriptRunner", "load_runner"),
    "pipeline": ("InferenceOptions", "SegmentationPredictor", "check_ensemble"),
    "predictor": ("Prediction", "Predictor"),
    "export": ("export_bundle", "export_model"),
    "monai_bundle": ("export_monai_bundle",),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
