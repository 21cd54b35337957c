"""Recipes: the YAML configs shipped in the package (``factorseg/config/recipes``) or given as files, their
``base:`` inheritance (resolved once, when a recipe is loaded, with a cycle check), command-line overrides
(``section.key=value``, YAML-parsed values) and the resolved config written beside a run.

Structure only: the values are checked by :func:`factorseg.config.schema.validate_recipe`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from factorseg.config.schema import SECTIONS, shown
from factorseg.errors import InputError


def available_recipes() -> list[str]:
    """Names of the recipes shipped in ``factorseg/config/recipes``."""
    folder = resources.files("factorseg.config") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_description(name: str, width: int = 100) -> str:
    """The first sentence of a shipped recipe's leading comment, shortened to ``width`` characters."""
    text = (resources.files("factorseg.config") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    joined = " ".join(lines)
    match = re.search(r"(?<=[.!?])\s", joined)
    sentence = joined[: match.start()] if match else joined
    if len(sentence) > width:
        sentence = sentence[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return sentence


def _model_for(model: Mapping[str, Any], name: Any) -> dict[str, Any]:
    """The ``model`` section that architecture ``name`` starts from: ``model`` itself for the same name, else
    nothing (another architecture starts from its own defaults, not from the previous one's arguments)."""
    return copy.deepcopy(dict(model)) if model.get("name") == name else {}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra``'s values over ``base``'s, mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _extend(base: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe over its ``base:`` recipe (:func:`_merge`); naming another model drops the base's model arguments."""
    if "name" in recipe.get("model", {}):
        base = {**base, "model": _model_for(base.get("model", {}), recipe["model"]["name"])}
    return _merge(base, recipe)


_MAX_BASE_DEPTH = 16
_MAX_RECIPE_BYTES = 1 << 20


def _read_recipe(name_or_path: str | Path, near: Path | None) -> tuple[str, str, Path | None]:
    """(identity, text, folder for relative ``base:`` files) of a shipped recipe name or a YAML file."""
    path = Path(name_or_path)
    shipped = resources.files("factorseg.config") / "recipes" / f"{name_or_path}.yaml"
    if path.suffix not in (".yaml", ".yml") and "/" not in str(name_or_path) and shipped.is_file():
        return f"recipe {name_or_path}", shipped.read_text(encoding="utf-8"), None
    if near is not None and not path.is_absolute() and (near / path).is_file():
        path = near / path
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        raise InputError(f"unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(available_recipes())} "
                         "(or give a .yaml file)")
    if not path.exists():
        raise InputError(f"{path}: recipe file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a recipe (.yaml) file")
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file, expected a recipe (.yaml) file")
    if path.stat().st_size > _MAX_RECIPE_BYTES:
        raise InputError(f"{path}: {path.stat().st_size:,} bytes is too large for a recipe "
                         f"(at most {_MAX_RECIPE_BYTES:,})")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                         "save the recipe as UTF-8") from None
    return str(path.resolve()), text, path.resolve().parent


def _load(name_or_path: str | Path, near: Path | None, chain: list[str]) -> dict[str, Any]:
    identity, text, folder = _read_recipe(name_or_path, near)
    label = Path(identity).name if folder is not None else str(name_or_path)
    if identity in chain:
        cycle = " -> ".join([*(Path(c).name if "/" in c else c.split()[-1] for c in chain), label])
        raise InputError(f"recipe base cycle: {cycle}")
    if len(chain) >= _MAX_BASE_DEPTH:
        raise InputError(f"{label}: more than {_MAX_BASE_DEPTH} levels of `base:` recipes")
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{label}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise InputError(f"{label}: YAML nested too deeply") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise InputError(f"{label}: a recipe must be a mapping of sections, got {type(cfg).__name__}")
    base = cfg.pop("base", None)
    unknown = sorted(str(k) for k in cfg if k not in SECTIONS)
    if unknown:
        raise InputError(f"{label}: unknown recipe section(s) {unknown}; known: base, {', '.join(SECTIONS)}")
    for section, values in cfg.items():
        if values is None:
            cfg[section] = {}
        elif not isinstance(values, dict):
            raise InputError(f"{label}: section '{section}' must be a mapping of key: value settings, "
                             f"got {shown(values)}")
        elif not all(isinstance(k, str) for k in values):
            bad = next(k for k in values if not isinstance(k, str))
            raise InputError(f"{label}: {section}: setting names must be text, got {shown(bad)}")
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise InputError(f"{label}: base must be a recipe name or a .yaml file, got {shown(base)}")
        cfg = _extend(_load(base, folder, [*chain, identity]), cfg)
    return cfg


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """A shipped recipe by name, or a YAML file; ``base:`` names a recipe to extend (a file's own folder
    first for relative paths). Structure only: the values are checked by
    :func:`~factorseg.config.schema.validate_recipe`."""
    cfg = _load(name_or_path, None, [])
    return {section: dict(cfg.get(section) or {}) for section in SECTIONS}


def switch_model(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The config with model ``name``; a different architecture drops the previous one's arguments."""
    out = copy.deepcopy(cfg)
    out["model"] = {**_model_for(out["model"], name), "name": name}
    return out


# YAML 1.1 reads 1e-4 (no dot) as text; on the command line it is meant as a number.
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _parse_value(raw: str, item: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise InputError(f"override {item!r}: value is not valid YAML") from None
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    return value


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``section.key.sub=value``) overrides; values are parsed as YAML.

    Setting ``model.name`` to another architecture drops the previous one's arguments (as ``--model`` does).
    """
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if len(keys) < 2 or keys[0] not in SECTIONS or not all(keys):
            raise InputError(f"override {item!r}: the key must look like section.key with a section among "
                             f"{', '.join(SECTIONS)}")
        value = _parse_value(raw, item)
        if keys == ["model", "name"] and isinstance(out.get("model"), dict):
            out["model"] = _model_for(out["model"], value)
        node = out
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise InputError(f"override {item!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


def save_config(cfg: dict[str, Any], path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from factorseg.io import atomic_write

    atomic_write(path, yaml.safe_dump(_listed(cfg), sort_keys=False).encode(), overwrite=True)


def _listed(value: Any) -> Any:
    """Tuples as lists (safe YAML has no tuples)."""
    if isinstance(value, dict):
        return {k: _listed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_listed(v) for v in value]
    return value


__all__ = ["apply_overrides", "available_recipes", "load_recipe", "recipe_description", "save_config", "switch_model"]
