"""Import the authors' Lightning checkpoints (Ashtari et al., paper-era code) as factorseg bundles.

The authors' ``SemanticSegmentation`` Lightning module stores its network's weights under ``net.<path>``
and pickles references to their classes (``factorizer.factorizer.SegmentationFactorizer``,
``torch.nn.modules.conv.Conv3d``, ``functools.partial``, ...) in ``hyper_parameters``. Reading such a file
must never import or run anything it names:

* every pickle global in the file is listed first (statically, with :mod:`pickletools`); a global that is
  neither allowed by PyTorch's weights-only loader nor on :data:`ALLOWED_PREFIXES` / :data:`ALLOWED_NAMES`
  refuses the file with one line naming it;
* the file is then read with ``torch.load(weights_only=True)``, each allowed global replaced by an inert
  :class:`Placeholder` class that only records the arguments and state it is given.

The network's structure is inferred from the tensors themselves (widths, depths, head size, rank, window
voxels, MLP ratio, heads, positional embedding); plain values in ``hyper_parameters`` (Swin or local
windows, window size, NMF iterations, dropout) are used where present and cross-checked. Every source key
is used exactly once and every weight of the factorseg model is filled, or the import is refused.
"""

from __future__ import annotations

import io
import math
import pickletools
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from factorseg.errors import InputError

__all__ = [
    "ALLOWED_NAMES",
    "ALLOWED_PREFIXES",
    "Placeholder",
    "convert_state_dict",
    "import_official_checkpoint",
    "read_official_checkpoint",
]

#: Modules whose names may be pickled in the authors' checkpoints; they are replaced by placeholders.
ALLOWED_PREFIXES = ("factorizer.", "torch.nn.modules.", "torch.optim.", "monai.")
#: Single globals allowed besides those prefixes.
ALLOWED_NAMES = frozenset({"functools.partial"})

_ALLOWED_TEXT = "factorizer.*, torch.nn.modules.*, torch.optim.*, monai.*, functools.partial"
# Opcodes that name globals in ways the weights-only loader does not accept (and a static scan cannot follow).
_INDIRECT_GLOBAL_OPS = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})

#: Channel names by input channel count: MSD Task01 (the authors' BraTS data) and ISLES'22.
DEFAULT_CHANNELS = {4: ["FLAIR", "T1w", "t1gd", "T2w"], 2: ["DWI", "ADC"]}
#: Label conventions by output channel count.
DEFAULT_LABELS = {3: "msd_task01", 1: "isles22"}
#: The paper's values, used where neither the shapes nor the hyper-parameters tell.
PAPER_NMF_ITERS, PAPER_SOLVER, PAPER_DROPOUT, PAPER_EPS = 5, "hals", 0.1, 1e-8
_SOLVERS = ("hals", "mu")


def _allowed(name: str) -> bool:
    return name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)


class Placeholder:
    """Inert stand-in for a class or function named in a checkpoint: it records what it is given, nothing else.

    One subclass per global name, with the name in ``global_name``; the real object is never imported.
    """

    global_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholder(name: str) -> type[Placeholder]:
    return type(f"Placeholder[{name}]", (Placeholder,), {"global_name": name})


# ---------------------------------------------------------------------------------------------- reading


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _pickle_globals(path: Path, content: bytes) -> set[str]:
    """Every global the checkpoint's pickle names (``module.qualname``), read statically (nothing is loaded)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(names) != 1:
                raise InputError(f"{path}: not a PyTorch checkpoint (no single data.pkl in the archive)")
            data = archive.read(names[0])
    except InputError:
        raise
    except zipfile.BadZipFile as exc:
        raise InputError(
            f"{path}: not a PyTorch checkpoint, or a corrupted or truncated one ({_one_line(exc)})"
        ) from exc
    except (OSError, EOFError, RuntimeError, ValueError) as exc:  # zlib/CRC/short reads inside the archive
        raise InputError(f"{path}: corrupted or truncated checkpoint ({_one_line(exc)})") from exc
    found: set[str] = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                module, _, qualname = str(arg).partition(" ")
                found.add(f"{module}.{qualname}")
            elif op.name in _INDIRECT_GLOBAL_OPS:
                raise InputError(
                    f"{path}: refused: the pickle names objects through the {op.name} opcode, which checkpoints "
                    "of the authors' code do not use; nothing was loaded"
                )
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle stream
        raise InputError(f"{path}: corrupted or truncated checkpoint (bad pickle data: {_one_line(exc)})") from exc
    return found


def _registered_names() -> set[str]:
    """Names this process registered as weights-only safe (``torch.serialization.add_safe_globals``)."""
    names = set()
    for entry in torch.serialization.get_safe_globals():
        if isinstance(entry, tuple) and len(entry) == 2:
            names.add(str(entry[1]))
        else:
            names.add(f"{getattr(entry, '__module__', '')}.{getattr(entry, '__qualname__', '')}")
    return names


def read_official_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint of the authors' code with inert placeholders for their classes.

    Refuses (:class:`InputError`, one line) files that are not PyTorch checkpoints, are corrupted, or name
    any global outside PyTorch's weights-only defaults and the allowlist. Returns the loaded dict.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a checkpoint file (.ckpt)")
    try:  # read once: the bytes that are checked are the bytes that are loaded
        content = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or _one_line(exc)})") from exc
    if not content:
        raise InputError(f"{path}: checkpoint file is empty")
    scanned = _pickle_globals(path, content)
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(content)))
    except Exception as exc:  # noqa: BLE001 - torch's zip reader fails in many ways on damaged files
        raise InputError(f"{path}: not a PyTorch checkpoint, or a corrupted one ({_one_line(exc)})") from exc
    # Globals another part of this process marked safe would be handed over as the real objects: treat them
    # as unsafe too unless PyTorch registered them itself.
    unsafe |= {name for name in scanned & _registered_names() if not name.startswith("torch.")}
    refused = sorted(name for name in unsafe if not _allowed(name))
    if refused:
        listed = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        raise InputError(
            f"{path}: refused: the checkpoint refers to {listed}; a checkpoint of the authors' code may only name "
            f"{_ALLOWED_TEXT}; nothing was loaded or run"
        )
    stand_ins = [(_placeholder(name), name) for name in sorted(unsafe)]
    try:
        with torch.serialization.safe_globals(stand_ins):
            raw = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated storages, malformed pickles, refused opcodes
        raise InputError(f"{path}: corrupted or unreadable checkpoint ({_one_line(exc)})") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{path}: not a Lightning checkpoint (holds a {type(raw).__name__}, not a dict)")
    return raw


def _state_and_hparams(raw: dict[str, Any], path: Path) -> tuple[dict[str, Tensor], Any]:
    state = raw.get("state_dict")
    hparams = raw.get("hyper_parameters")
    if state is None and raw and all(isinstance(v, Tensor) for v in raw.values()):
        state, hparams = raw, None  # a bare state dict saved with torch.save
    if not isinstance(state, Mapping) or not state:
        raise InputError(f"{path}: not a Lightning checkpoint (no state_dict of weights)")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise InputError(f"{path}: state_dict entry {bad[0]!r} is not a named tensor")
    return dict(state), hparams


# ------------------------------------------------------------------------------------- hyper-parameters


def _spec(obj: Any) -> tuple[str | None, dict[str, Any]]:
    """(global name, keyword arguments) of a pickled ``[cls, {kwargs}]`` pair, class, partial or instance."""
    if isinstance(obj, (list, tuple)) and len(obj) == 2 and isinstance(obj[1], Mapping):
        name, _ = _spec(obj[0])
        return name, dict(obj[1])
    if isinstance(obj, type) and issubclass(obj, Placeholder):
        return obj.global_name, {}
    if isinstance(obj, Placeholder):
        state = getattr(obj, "state", None)
        if obj.global_name == "functools.partial":
            func = obj.args[0] if obj.args else None
            kwargs: dict[str, Any] = {}
            if isinstance(state, tuple) and len(state) >= 3:
                func = state[0]
                if isinstance(state[2], Mapping):
                    kwargs.update(state[2])
            name, inner = _spec(func)
            return name, {**inner, **kwargs}
        kwargs = dict(obj.kwargs)
        if isinstance(state, Mapping):
            kwargs.update({k: v for k, v in state.items() if isinstance(k, str)})
        return obj.global_name, kwargs
    if isinstance(obj, Mapping):
        return None, dict(obj)
    return None, {}


def _plain(kwargs: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``kwargs[key]`` if it is a plain value of ``kind`` (not a placeholder or container), else None."""
    value = kwargs.get(key)
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        return None
    return value if isinstance(value, kind) else None


def _ints(value: Any) -> list[int] | None:
    """An int or a list/tuple of ints as a list, else None."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(is_int(v) for v in value):
        return list(value)
    return None


def _hparam_values(hparams: Any) -> dict[str, Any]:
    """The plain values the authors' ``hyper_parameters`` hold about the network (missing ones absent)."""
    out: dict[str, Any] = {}
    if not isinstance(hparams, Mapping):
        return out
    net_name, net = _spec(hparams.get("network"))
    if net_name is not None:
        out["network"] = net_name
    for key in ("in_channels", "out_channels"):
        if _plain(net, key, int) is not None:
            out[key] = net[key]
    widths = _ints(net.get("encoder_width"))
    if widths is not None:
        out["widths"] = widths
    dropouts = []
    if _plain(net, "dropout", (int, float)) is not None:
        dropouts.append(float(net["dropout"]))
    _, nmf = _spec(net.get("nmf"))
    if _plain(nmf, "dropout", (int, float)) is not None:
        dropouts.append(float(nmf["dropout"]))
    if dropouts:
        out["dropout"] = dropouts[0]
    tensorize_name, tensorize = _spec(nmf.get("tensorize"))
    if tensorize_name is not None:
        out["tensorize"] = tensorize_name
        short = tensorize_name.rsplit(".", 1)[-1]
        grid = next((tensorize[k] for k in ("patch_size", "grid_size", "window_size") if k in tensorize), None)
        if short == "SWMatricize":
            out["variant"] = "swin"
        elif short.endswith("Matricize") and _ints(grid) is not None:
            out["variant"] = "local"
        if _ints(grid) is not None:
            out["window_size"] = _ints(grid)
    if _plain(tensorize, "head_dim", int) is not None:
        out["head_dim"] = tensorize["head_dim"]
    _, factorize = _spec(nmf.get("factorize"))
    for key in ("num_iters", "rank"):
        if _plain(factorize, key, int) is not None:
            out[key] = factorize[key]
    if _plain(factorize, "solver", str) is not None:
        out["solver"] = factorize["solver"].lower()
    if _plain(factorize, "eps", float) is not None:
        out["eps"] = factorize["eps"]
    return out


# ------------------------------------------------------------------------------------------ conversion


class _Source:
    """The authors' state dict (without ``net.``): every key is taken exactly once, with its shape checked."""

    def __init__(self, state: Mapping[str, Tensor], prefix: str) -> None:
        self.prefix = prefix
        self.left = {k[len(prefix):]: v for k, v in state.items()}

    def name(self, key: str) -> str:
        return self.prefix + key

    def has(self, key: str) -> bool:
        return key in self.left

    def take(self, key: str, ndim: int | None = None) -> Tensor:
        if key not in self.left:
            raise InputError(f"state_dict lacks {self.name(key)} (not the authors' SegmentationFactorizer layout?)")
        value = self.left.pop(key)
        if ndim is not None and value.dim() != ndim:
            raise InputError(f"{self.name(key)} has shape {list(value.shape)}, expected {ndim} dimensions")
        return value.detach()

    def expect(self, key: str, shape: Sequence[int]) -> Tensor:
        value = self.take(key)
        if list(value.shape) != list(shape):
            raise InputError(f"{self.name(key)} has shape {list(value.shape)}, expected {list(shape)}")
        return value

    def indices(self, start: str) -> list[int]:
        """The indices ``N`` of the remaining keys ``<start>N.*``, sorted; refused unless they are 0..n-1."""
        regex = re.compile(re.escape(start) + r"(\d+)\.")
        found = sorted({int(m.group(1)) for k in self.left if (m := regex.match(k))})
        if found != list(range(len(found))):
            raise InputError(f"state_dict keys {self.name(start)}N.* have N = {found}, expected 0..{len(found) - 1}")
        return found


def _pointwise(w: Tensor) -> Tensor:
    """The authors' ``Linear`` weight ``[out, in, 1]`` as a 1x1x1 ``Conv3d`` weight ``[out, in, 1, 1, 1]``."""
    return w.reshape(w.shape[0], w.shape[1], 1, 1, 1)


def _block(src: _Source, p: str, channels: int, ours: str, out: dict[str, Tensor]) -> dict[str, int]:
    """Move one Factorizer block ``p`` into ``out`` under ``ours``; return its head_dim, rank, window voxels, hidden."""
    c = channels
    nmf, mlp = f"{p}.blocks.nmf.fn.", f"{p}.blocks.mlp.fn."
    out[f"{ours}.norm1.norm.weight"] = src.expect(f"{nmf}0.norm.weight", [c])
    out[f"{ours}.norm1.norm.bias"] = src.expect(f"{nmf}0.norm.bias", [c])
    out[f"{ours}.mixer.in_proj.weight"] = _pointwise(src.expect(f"{nmf}1.in_proj.linear.weight", [c, c, 1]))
    u0 = src.take(f"{nmf}1.factorize.init.u0", ndim=2)
    v0 = src.take(f"{nmf}1.factorize.init.v0", ndim=2)
    if u0.shape[1] != v0.shape[1]:
        raise InputError(f"{src.name(nmf)}1.factorize.init: u0 {list(u0.shape)} and v0 {list(v0.shape)} differ in rank")
    out[f"{ours}.mixer.nmf.u0"], out[f"{ours}.mixer.nmf.v0"] = u0, v0
    out[f"{ours}.mixer.out_proj.weight"] = _pointwise(src.expect(f"{nmf}1.out_proj.linear.weight", [c, c, 1]))
    out[f"{ours}.mixer.out_proj.bias"] = src.expect(f"{nmf}1.out_proj.linear.bias", [c])
    out[f"{ours}.norm2.norm.weight"] = src.expect(f"{mlp}0.norm.weight", [c])
    out[f"{ours}.norm2.norm.bias"] = src.expect(f"{mlp}0.norm.bias", [c])
    first = src.take(f"{mlp}1.block.0.linear.weight", ndim=3)
    hidden = first.shape[0]
    if list(first.shape) != [hidden, c, 1]:
        raise InputError(
            f"{src.name(mlp)}1.block.0.linear.weight has shape {list(first.shape)}, expected [hidden, {c}, 1]"
        )
    out[f"{ours}.mlp.net.0.weight"] = _pointwise(first)
    out[f"{ours}.mlp.net.0.bias"] = src.expect(f"{mlp}1.block.0.linear.bias", [hidden])
    out[f"{ours}.mlp.net.3.weight"] = _pointwise(src.expect(f"{mlp}1.block.3.linear.weight", [c, hidden, 1]))
    out[f"{ours}.mlp.net.3.bias"] = src.expect(f"{mlp}1.block.3.linear.bias", [c])
    if c % u0.shape[0]:
        raise InputError(f"{src.name(nmf)}1.factorize.init.u0: head size {u0.shape[0]} does not divide {c} channels")
    return {"head_dim": u0.shape[0], "rank": u0.shape[1], "window_voxels": v0.shape[0], "hidden": hidden, "channels": c}


def _same(infos: list[dict[str, int]], key: str, what: str) -> int:
    values = sorted({info[key] for info in infos})
    if len(values) != 1:
        raise InputError(f"the blocks differ in {what} ({values}); factorseg's Factorizer has one for all blocks")
    return values[0]


def _window(window_voxels: int, hp_window: list[int] | None, option: int | Sequence[int] | None) -> list[int]:
    """The window edge lengths: the option, else the hyper-parameters, else the cube root of the voxel count."""
    if option is not None:
        window = [int(option)] * 3 if isinstance(option, int) else [int(w) for w in option]
        source = "--window-size"
    elif hp_window is not None:
        window = hp_window * 3 if len(hp_window) == 1 else list(hp_window)
        source = "the checkpoint's patch_size"
    else:
        edge = round(window_voxels ** (1 / 3))
        if edge**3 != window_voxels:
            raise InputError(
                f"v0 has {window_voxels} rows, not a cube's voxel count; give the window with --window-size X Y Z"
            )
        return [edge] * 3
    if len(window) != 3 or min(window) < 1:
        raise InputError(f"window size {window} ({source}) must be 1 or 3 positive integers")
    if math.prod(window) != window_voxels:
        raise InputError(f"window {window} ({source}) has {math.prod(window)} voxels but v0 has {window_voxels} rows")
    return window


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    hparams: Any = None,
    *,
    variant: str | None = None,
    nmf_iters: int | None = None,
    window_size: int | Sequence[int] | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The factorseg model config and state dict of the authors' ``SegmentationFactorizer`` weights.

    ``state_dict`` has the authors' keys (``net.`` prefix optional), ``hparams`` their ``hyper_parameters``
    (placeholders from :func:`read_official_checkpoint`, or None). ``variant`` (``"swin"`` or ``"local"``),
    ``nmf_iters`` and ``window_size`` override what the hyper-parameters say. Raises :class:`InputError` for
    weights of another architecture, inconsistent shapes or keys left unused.
    """
    keys = list(state_dict)
    prefix = "net." if any(k.startswith("net.") for k in keys) else ""
    if f"{prefix}stem.weight" not in state_dict or not any(k.startswith(f"{prefix}encoder.blocks.") for k in keys):
        sample = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        raise InputError(
            f"state_dict is not the authors' SegmentationFactorizer (no net.stem.weight and net.encoder.blocks.*; "
            f"has {sample})"
        )
    hp = _hparam_values(hparams)
    if "network" in hp and not hp["network"].endswith(".SegmentationFactorizer"):
        raise InputError(f"the checkpoint's network is {hp['network']}, not factorizer's SegmentationFactorizer")
    outside = [k for k in keys if not k.startswith(prefix)]
    if outside:
        raise InputError(f"state_dict key {outside[0]!r} is not part of the network (net.*)")
    src = _Source(state_dict, prefix)
    out: dict[str, Tensor] = {}
    infos: list[dict[str, int]] = []

    stem = src.take("stem.weight", ndim=5)
    if list(stem.shape[2:]) != [3, 3, 3]:
        raise InputError(f"{src.name('stem.weight')} has shape {list(stem.shape)}, expected a 3x3x3 convolution")
    widths, in_channels = [int(stem.shape[0])], int(stem.shape[1])
    out["stem.conv.weight"] = stem

    stages = src.indices("encoder.blocks.")
    levels = len(stages)
    if levels < 2:
        raise InputError(f"found {levels} encoder stage(s); a U-shaped Factorizer has at least 2")
    encoder_depths = []
    for i in stages:
        base = f"encoder.blocks.{i}.blocks."
        indices = src.indices(base)
        first = 0
        if i > 0:
            down = src.take(f"{base}0.weight", ndim=5)
            if list(down.shape[1:]) != [widths[-1], 2, 2, 2]:
                raise InputError(
                    f"{src.name(base)}0.weight has shape {list(down.shape)}, expected [C, {widths[-1]}, 2, 2, 2]"
                )
            widths.append(int(down.shape[0]))
            out[f"down.{i - 1}.conv.weight"] = down
            first = 1
        blocks = [j for j in indices if j >= first]
        if not blocks:
            raise InputError(f"encoder stage {i} ({src.name(base)}*) has no Factorizer block")
        for d, j in enumerate(blocks):
            if src.has(f"{base}{j}.pos_embed.pos"):
                where = f"{src.name(base)}{j}.pos_embed.pos"
                if i != levels - 1 or d != 0:
                    raise InputError(f"{where}: a positional embedding outside the bottleneck's first block")
                pos = src.take(f"{base}{j}.pos_embed.pos", ndim=5)
                if list(pos.shape[:2]) != [1, widths[i]]:
                    raise InputError(f"{where} has shape {list(pos.shape)}, expected [1, {widths[i]}, X, Y, Z]")
                out["pos_embed.weight"] = pos
            infos.append(_block(src, f"{base}{j}", widths[i], f"encoder.{i}.{d}", out))
        encoder_depths.append(len(blocks))

    decoder_stages = src.indices("decoder.blocks.")
    if len(decoder_stages) != levels - 1:
        raise InputError(f"{len(decoder_stages)} decoder stages for {levels} encoder stages (expected {levels - 1})")
    decoder_depths = [0] * (levels - 1)
    for j in decoder_stages:
        i = levels - 2 - j  # the authors count decoder stages from the deepest; ours by the level they output
        c, base = widths[i], f"decoder.blocks.{j}."
        out[f"up.{i}.conv.weight"] = src.expect(f"{base}upsample.weight", [widths[i + 1], c, 2, 2, 2])
        out[f"up.{i}.conv.bias"] = src.expect(f"{base}upsample.bias", [c])
        adapter = src.expect(f"{base}blocks.0.adapter.0.linear.weight", [c, 2 * c, 1])
        # The authors fuse cat([skip, up]); factorseg cat([up, skip]): swap the two column blocks.
        out[f"fuse.{i}.weight"] = _pointwise(torch.cat([adapter[:, c:], adapter[:, :c]], dim=1))
        blocks = src.indices(f"{base}blocks.")
        for d in blocks:
            infos.append(_block(src, f"{base}blocks.{d}", c, f"decoder.{i}.{d}", out))
        if not blocks:
            raise InputError(f"decoder stage {j} ({src.name(base)}blocks.*) has no Factorizer block")
        decoder_depths[i] = len(blocks)

    heads = src.indices("heads.")
    if not 1 <= len(heads) <= levels - 1:
        raise InputError(f"{len(heads)} output heads (net.heads.*); expected 1 to {levels - 1}")
    out_channels = int(src.left.get("heads.0.weight", torch.empty(0)).shape[0])
    for k in heads:
        ours = "head" if k == 0 else f"aux_heads.{k - 1}"
        out[f"{ours}.weight"] = src.expect(f"heads.{k}.weight", [out_channels, widths[k], 1, 1, 1])
        out[f"{ours}.bias"] = src.expect(f"heads.{k}.bias", [out_channels])

    if src.left:
        unused = sorted(src.left)
        raise InputError(
            f"state_dict key(s) {', '.join(src.name(k) for k in unused[:3])}"
            f"{' and more' if len(unused) > 3 else ''} ({len(unused)} in all) do not belong to the authors' "
            "SegmentationFactorizer layout"
        )

    head_dim = _same(infos, "head_dim", "head size (u0 rows)")
    rank = _same(infos, "rank", "NMF rank")
    window_voxels = _same(infos, "window_voxels", "window voxels (v0 rows)")
    ratios = sorted({info["hidden"] / info["channels"] for info in infos})
    if len(ratios) != 1 or any(int(round(info["channels"] * ratios[0])) != info["hidden"] for info in infos):
        raise InputError(f"the blocks differ in MLP ratio ({ratios}); factorseg's Factorizer uses one ratio")
    checks = (
        ("in_channels", "in_channels", in_channels), ("encoder_width", "widths", widths),
        ("head_dim", "head_dim", head_dim), ("out_channels", "out_channels", out_channels), ("rank", "rank", rank),
    )
    for key, hp_key, inferred in checks:
        value = hp.get(hp_key)
        if value is not None and value != inferred:
            raise InputError(f"hyper_parameters say {key} = {value} but the weights have {inferred}")
    window = _window(window_voxels, hp.get("window_size"), window_size)

    chosen = variant or hp.get("variant")
    if chosen is None:
        what = f"tensorize {hp['tensorize']}" if "tensorize" in hp else "no hyper_parameters about windows"
        raise InputError(f"cannot tell Swin from local windows ({what}); pass --variant swin or --variant local")
    if chosen not in ("swin", "local"):
        raise InputError(f"variant {chosen!r} cannot be imported; choose swin or local")
    solver = hp.get("solver", PAPER_SOLVER)
    if solver not in _SOLVERS:
        raise InputError(f"the checkpoint's NMF solver {solver!r} is not one of factorseg's {', '.join(_SOLVERS)}")
    iters = nmf_iters if nmf_iters is not None else hp.get("num_iters", PAPER_NMF_ITERS)
    if int(iters) < 1:
        raise InputError(f"NMF iterations must be >= 1, got {iters}")
    pos = out.get("pos_embed.weight")
    model_cfg: dict[str, Any] = {
        "name": f"{chosen}_factorizer",
        "in_channels": in_channels,
        "out_channels": out_channels,
        "widths": widths,
        "encoder_depths": encoder_depths,
        "decoder_depths": decoder_depths,
        "head_dim": head_dim,
        "window_size": window[0] if len(set(window)) == 1 else window,
        "rank": rank,
        "nmf_iters": int(iters),
        "solver": solver,
        "init": "fixed_uv",
        "mlp_ratio": float(ratios[0]),
        "dropout": float(hp.get("dropout", PAPER_DROPOUT)),
        "deep_supervision": len(heads) > 1,
        "ds_heads": len(heads),
        "stem": "conv",
        "down_norm": False,
        "proj_bias": False,
        "fuse_dropout": True,
        "pos_embed_size": [int(s) for s in pos.shape[2:]] if pos is not None else None,
        "eps": float(hp.get("eps", PAPER_EPS)),
    }
    return model_cfg, out


# ------------------------------------------------------------------------------------------- the bundle


def _labels(name: str | None, out_channels: int) -> dict[str, Any]:
    """The label convention as a dict, fitted to ``out_channels`` (a 1-channel model is a sigmoid region)."""
    from factorseg.data.labels import LabelSpec, get_label_spec

    if name is None:
        name = DEFAULT_LABELS.get(out_channels)
        if name is None:
            raise InputError(f"the model has {out_channels} output channels; name its label convention with --labels")
    spec = get_label_spec(name)
    if spec.num_outputs != out_channels and out_channels == 1 and spec.mode == "classes" and len(spec.values) == 2:
        # One sigmoid channel for a background/foreground convention (the authors' ISLES'22 model).
        value = spec.values[1]
        spec = LabelSpec("regions", (spec.names[1],), spec.values, ((value,),), (value,), spec.convention)
    if spec.num_outputs != out_channels:
        raise InputError(
            f"label convention {name!r} has {spec.num_outputs} output channels but the model has {out_channels}"
        )
    return spec.to_dict()


def _channels(names: Sequence[str] | None, in_channels: int) -> list[str]:
    if names is None:
        if in_channels not in DEFAULT_CHANNELS:
            raise InputError(f"the model takes {in_channels} input channels; name them with --channels")
        return list(DEFAULT_CHANNELS[in_channels])
    names = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    if len(names) != in_channels:
        raise InputError(f"{len(names)} channel name(s) given for a model with {in_channels} input channels")
    return names


def bundle_config(
    model_cfg: Mapping[str, Any],
    labels: str | None = None,
    channels: Sequence[str] | None = None,
    crop: int | None = None,
    spacing: Sequence[float] | None | str = "auto",
) -> dict[str, Any]:
    """The bundle config of an imported model: labels, channels, preprocessing and inference defaults.

    ``spacing="auto"``: 1 mm isotropic for MSD Task01 (BraTS) labels, the images' own spacing otherwise.
    ``crop`` (the training patch edge) defaults to the positional embedding's size times the total stride.
    """
    from factorseg.config import load_recipe
    from factorseg.data.transforms import TransformConfig

    label_dict = _labels(labels, int(model_cfg["out_channels"]))
    if crop is None:
        pos = model_cfg.get("pos_embed_size")
        if not pos:
            raise InputError("the model has no positional embedding to tell the training patch size; pass --crop")
        if len(set(pos)) != 1:
            raise InputError(f"positional embedding {list(pos)} is not a cube; pass --crop")
        crop = int(pos[0]) * 2 ** (len(model_cfg["widths"]) - 1)
    if int(crop) < 1:
        raise InputError(f"--crop must be positive, got {crop}")
    if isinstance(spacing, str):
        spacing = [1.0, 1.0, 1.0] if label_dict.get("convention", "").startswith(("msd_task01", "brats")) else None
    transforms = TransformConfig(spacing=spacing, roi_size=(int(crop),) * 3)  # type: ignore[arg-type]
    return {
        "model": dict(model_cfg),
        "labels": label_dict,
        "transforms": transforms.to_dict(),
        "channels": _channels(channels, int(model_cfg["in_channels"])),
        "inference": dict(load_recipe("default")["inference"]),
    }


def _check_fit(model: torch.nn.Module, state: Mapping[str, Tensor]) -> None:
    """Refuse (one line) weights whose keys or shapes differ from the model's own state dict."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} ({len(missing)})")
        if extra:
            parts.append(f"has no place for {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''} ({len(extra)})")
        raise InputError(f"the converted weights do not fit factorseg's Factorizer: {'; '.join(parts)}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise InputError(
                f"the converted weight {key} has shape {list(state[key].shape)}; factorseg's model wants {list(shape)}"
            )


def import_official_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    overwrite: bool = False,
    variant: str | None = None,
    nmf_iters: int | None = None,
    window_size: int | Sequence[int] | None = None,
    labels: str | None = None,
    channels: Sequence[str] | None = None,
    crop: int | None = None,
    spacing: Sequence[float] | None | str = "auto",
) -> Path:
    """Convert a checkpoint of the authors' code into a factorseg bundle at ``dst`` (written atomically).

    Nothing is written when anything is refused. See :func:`convert_state_dict` and :func:`bundle_config`
    for the options.
    """
    from factorseg.bundles.format import build_model, save_bundle

    src, dst = Path(src), Path(dst)
    if dst.is_dir():
        raise InputError(f"{dst}: is a folder, expected the output bundle's file name (e.g. model.pt)")
    if not dst.parent.is_dir():
        raise InputError(f"{dst}: output folder {dst.parent} does not exist")
    if dst.exists() and not overwrite:
        raise InputError(f"{dst}: already exists (pass --overwrite to replace it)")
    raw = read_official_checkpoint(src)
    state, hparams = _state_and_hparams(raw, src)
    try:
        model_cfg, converted = convert_state_dict(
            state, hparams, variant=variant, nmf_iters=nmf_iters, window_size=window_size
        )
        config = bundle_config(model_cfg, labels, channels, crop, spacing)
        model = build_model(model_cfg)
        _check_fit(model, converted)
        model.load_state_dict(converted, strict=True)
    except InputError as exc:
        raise InputError(f"{src}: {exc}") from exc
    except RuntimeError as exc:  # load_state_dict after the checks: should not happen
        raise InputError(f"{src}: weights do not fit the model ({_one_line(exc)})") from exc
    return save_bundle(config, model.eval(), dst, overwrite=overwrite)
