"""Interpretability of Factorizer models: extract, store, picture and score the NMF components.

* :mod:`factorseg.explain.components`: the NMF factors of chosen blocks captured during an ordinary forward
  pass (:func:`explain`, :func:`list_blocks`), as :class:`ComponentMaps` (maps, unit channel loadings, scaled
  spatial factors, per-window error; the module docstring says what a map's value means), and
  :func:`upsample_maps` to the input grid;
* :mod:`factorseg.explain.overlap`: maps scored against a reference label (:func:`component_label_overlap`:
  AUC and best Dice per component and label region);
* :mod:`factorseg.explain.maps`: maps stored as NIfTI over the scan (:func:`write_maps_nifti`, one map with
  :func:`write_component_nifti`; 16-bit integers with a scale factor by default, :func:`quantise_maps`,
  :data:`MAP_DTYPES`, :data:`MAP_LEVELS`);
* :mod:`factorseg.explain.montage`: PNG montages over the scan (:func:`save_montage`, :data:`MAP_UNIT`), cut
  through the label's centre (:func:`label_centre`);
* :mod:`factorseg.explain.run`: the entry points: :func:`run_explain` for one preprocessed case and
  :func:`explain_case` for a loaded model and a case's files (``factorseg explain``, the demo), writing the
  maps, montages, ``overlap.csv`` and the ``components.json`` index.

Names are imported from their module on first use, so that ``import factorseg.explain`` loads neither torch
nor nibabel.
"""

from __future__ import annotations

from factorseg._lazy import lazy_exports

_MODULES = {
    "components": ("ComponentMaps", "explain", "list_blocks", "upsample_maps"),
    "overlap": ("LabelValues", "component_label_overlap"),
    "maps": ("MAP_DTYPES", "MAP_LEVELS", "quantise_maps", "write_component_nifti", "write_maps_nifti"),
    "montage": ("MAP_UNIT", "label_centre", "save_montage"),
    "run": ("explain_case", "run_explain"),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
