"""Configuration: recipes, their types, and typed views of their sections.

A config is plain data in five sections (``model``, ``data``, ``transforms``, ``train``, ``inference``) in three
places: a recipe (YAML), the resolved run config (``config.yaml`` beside a run) and a trained model's config
(inside its bundle; ``labels`` and ``channels`` instead of ``data`` and ``train``). What lives where:

* :mod:`factorseg.config.schema`: the type and range of every value (:data:`SCHEMA`, the ``Spec`` classes) and the
  checks of whole configs, :func:`validate_recipe` where a recipe enters and :func:`validate_bundle_config` where
  a model is loaded;
* :mod:`factorseg.config.recipes`: the shipped recipes (``factorseg/config/recipes/*.yaml``), ``base:``
  inheritance, ``-s section.key=value`` overrides, the model-switch rule and :func:`save_config`;
* :mod:`factorseg.config.sections`: :class:`DataConfig`, :class:`TrainConfig` and :class:`InferenceConfig`, the
  frozen views code reads a section through, and the one home of their defaults (``transforms``:
  :class:`factorseg.data.transforms.TransformConfig`).
"""

from factorseg.config.recipes import (
    apply_overrides,
    available_recipes,
    load_recipe,
    recipe_description,
    save_config,
    switch_model,
)
from factorseg.config.schema import (
    BASELINE_SIZES,
    MODEL_COMMON,
    SCHEMA,
    SECTIONS,
    Bool,
    Choice,
    Either,
    Int,
    LabelDict,
    Null,
    Num,
    Section,
    Seq,
    Spec,
    Text,
    check_labels,
    describe_keys,
    effective_channels,
    factorizer_keys,
    validate_bundle_config,
    validate_model,
    validate_recipe,
    validate_section,
)
from factorseg.config.sections import DataConfig, InferenceConfig, TrainConfig

__all__ = [
    "BASELINE_SIZES", "MODEL_COMMON", "SCHEMA", "SECTIONS", "Bool", "Choice", "DataConfig", "Either",
    "InferenceConfig", "Int", "LabelDict", "Null", "Num", "Section", "Seq", "Spec", "Text", "TrainConfig",
    "apply_overrides", "available_recipes", "check_labels", "describe_keys", "effective_channels",
    "factorizer_keys", "load_recipe", "recipe_description", "save_config", "switch_model", "validate_bundle_config",
    "validate_model", "validate_recipe", "validate_section",
]
