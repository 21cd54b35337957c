"""Models shipped inside the package, usable by name (``factorseg predict --model hippocampus``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from factorseg.models.bundle import LoadedModel, load_bundle
from factorseg.errors import InputError


def shipped_models() -> dict[str, Path]:
    """Name -> bundle path of every model shipped in ``factorseg/pretrained``."""
    folder = resources.files("factorseg") / "pretrained"
    if not folder.is_dir():
        return {}
    return {p.name[: -len(".pt")]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".pt")}


def resolve_model(name_or_path: str) -> LoadedModel:
    """Load a bundle from a path, or a shipped model by name."""
    path = Path(name_or_path)
    if path.exists():
        return load_bundle(path)
    shipped = shipped_models()
    if name_or_path in shipped:
        return load_bundle(shipped[name_or_path])
    names = ", ".join(sorted(shipped)) or "none"
    raise InputError(f"model {name_or_path!r} is neither a file nor a shipped model (shipped: {names})")
