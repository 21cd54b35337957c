"""Files in general: regular-file checks before opening, atomic outputs and the one JSON writer.

Inputs are only opened if they are regular files: FIFOs, devices and sockets would block or never end, so
they are refused from ``os.stat`` before anything is opened. Outputs are written to a temporary file in the
destination folder and renamed into place, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from factorseg.errors import InputError

__all__ = ["atomic_path", "atomic_write", "check_regular_file", "json_ready", "write_json"]

PathLike = str | os.PathLike[str]

_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _one_line(exc: BaseException) -> str:
    """First line of an exception message, so that InputError messages stay one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def check_regular_file(path: PathLike, what: str = "file", expected: str = "a NIfTI file (.nii or .nii.gz)") -> int:
    """Size of ``path`` if it is a regular file (symbolic links followed); a one-line InputError otherwise.

    Missing paths and broken links (``<path>: <what> not found``), folders (``expected <expected>``), FIFOs,
    devices (such as ``/dev/zero`` behind a link named ``.nii.gz``) and sockets are refused from ``os.stat``
    alone, before anything is opened: reading them would block or never end.
    """
    return _stat_regular(Path(path), what, expected).st_size


def _stat_regular(path: Path, what: str = "file", expected: str = "a NIfTI file (.nii or .nii.gz)") -> os.stat_result:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        broken = " (broken symbolic link)" if os.path.islink(path) else ""
        raise InputError(f"{path}: {what} not found{broken}") from None
    except PermissionError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    except OSError as exc:  # symbolic-link loops, names too long, ...
        raise InputError(f"{path}: cannot be read ({exc.strerror or _one_line(exc)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a folder, expected {expected}")
    if not stat.S_ISREG(info.st_mode):
        target = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise InputError(f"{path}: is {_kind(info.st_mode)}{target}, not a regular file")
    return info


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open a regular file for reading; return it and its size.

    The file is opened with ``O_NONBLOCK`` and checked again with ``fstat`` on the open descriptor, so that a
    path swapped for a FIFO or device after :func:`_stat_regular` still cannot block or stream forever.
    """
    _stat_regular(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or _one_line(exc)})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(f"{path}: is {_kind(info.st_mode)}, not a regular file")
    return os.fdopen(fd, "rb"), info.st_size


@contextmanager
def atomic_path(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place on success, delete it on any error.

    The temporary name keeps the destination's file name as its ending (``.tmp-<random>-<name>``) so that
    writers which pick a format from the suffix (nibabel: ``.nii.gz``) behave as for the final name. An
    existing destination is refused with :class:`InputError` unless ``overwrite`` is true; without
    overwrite the final step is a hard link, which fails instead of clobbering a file created meanwhile.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: output folder {path.parent} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, cannot write a file there")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (pass overwrite to replace it)")
    tmp = path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer did not create {tmp}")
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise InputError(f"{path}: already exists (pass overwrite to replace it)") from exc
            except OSError:  # file systems without hard links
                if path.exists():
                    raise InputError(f"{path}: already exists (pass overwrite to replace it)") from None
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: PathLike, content: bytes | Callable[[Path], object], overwrite: bool = False) -> Path:
    """Write ``content`` (bytes, or a function that writes to the path it is given) atomically to ``path``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        if isinstance(content, bytes | bytearray | memoryview):
            tmp.write_bytes(bytes(content))
        else:
            content(tmp)
    return Path(path)


def json_ready(obj: Any) -> Any:
    """``obj`` as plain JSON data: numpy scalars and arrays as Python numbers and lists, NaN and infinities as
    None (strict JSON has no NaN), tuples as lists; anything else unchanged."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: PathLike, payload: Any, overwrite: bool = False) -> Path:
    """Write ``payload`` as strict JSON (:func:`json_ready`, indent 2, a final newline) atomically to ``path``."""
    text = json.dumps(json_ready(payload), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, text.encode(), overwrite=overwrite)
