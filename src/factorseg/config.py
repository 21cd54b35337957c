"""Recipes: YAML configs shipped in the package, merged with command-line overrides.

A recipe has four sections: ``model`` (registry name + constructor overrides), ``data`` (format,
label convention), ``transforms`` (:class:`~factorseg.data.transforms.TransformConfig`), ``train``
and ``inference``. Any value can be overridden with ``section.key=value`` (YAML-parsed value).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from factorseg.errors import InputError

SECTIONS = ("model", "data", "transforms", "train", "inference")


def available_recipes() -> list[str]:
    """Names of the recipes shipped in ``factorseg/recipes``."""
    folder = resources.files("factorseg") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    if extra.get("model", {}).get("name", base.get("model", {}).get("name")) != base.get("model", {}).get("name"):
        # Another architecture starts from its own defaults, not from the base model's arguments.
        out["model"] = {}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """A shipped recipe by name, or a YAML file; ``base:`` names a recipe to extend."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputError(f"{path}: recipe file not found")
        text = path.read_text()
    else:
        resource = resources.files("factorseg") / "recipes" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise InputError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(available_recipes())}")
        text = resource.read_text()
    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{name_or_path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(cfg, dict):
        raise InputError(f"{name_or_path}: a recipe must be a mapping of sections")
    base = cfg.pop("base", None)
    if base is not None:
        cfg = _merge(load_recipe(base), cfg)
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise InputError(f"{name_or_path}: unknown recipe section(s) {unknown}; known: {list(SECTIONS)}")
    return {section: dict(cfg.get(section) or {}) for section in SECTIONS}


def switch_model(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The config with model ``name``; a different architecture drops the previous one's arguments."""
    out = copy.deepcopy(cfg)
    if out["model"].get("name") != name:
        out["model"] = {"name": name}
    return out


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``section.key.sub=value``) overrides; values are parsed as YAML."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if len(keys) < 2 or keys[0] not in SECTIONS:
            raise InputError(f"override {item!r}: the key must start with one of {', '.join(SECTIONS)}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise InputError(f"override {item!r}: value is not valid YAML") from exc
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {key} is not a section")
        node[keys[-1]] = value
    return out


def save_config(cfg: dict[str, Any], path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from factorseg.io import atomic_write

    atomic_write(path, yaml.safe_dump(cfg, sort_keys=False).encode(), overwrite=True)
