"""NIfTI files: their names, validated reading, grid checks and writing.

Names: :data:`NIFTI_SUFFIXES` (``.nii.gz``, ``.nii``, in any letter case), :func:`is_nifti_name`,
:func:`strip_nifti` (the case id of a file name) and :func:`split_channel_suffix` (nnU-Net's ``_XXXX`` channel
suffix), used by every stage that lists, pairs or names NIfTI files.

Reading: everything a user hands to the CLI goes through here, so that a bad file produces a one-line
:class:`~factorseg.errors.InputError` naming the file and the problem instead of a traceback from deep inside
nibabel or gzip. Inputs are only opened if they are regular files (see :mod:`factorseg.io.files`). Memory is
bounded before any voxel is read: a header that promises more voxel data than its file can hold, or more than
:func:`max_voxels` voxels (``FACTORSEG_MAX_VOXELS``), is refused from the header alone. :func:`save_nifti`
writes atomically.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, SpatialImage

from factorseg.errors import InputError
from factorseg.io.files import PathLike, _one_line, _open_regular, _stat_regular, atomic_write

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "MAX_VOXELS_ENV",
    "NIFTI_SUFFIXES",
    "Volume",
    "check_same_grid",
    "is_nifti_name",
    "max_voxels",
    "read_header",
    "read_image",
    "save_nifti",
    "split_channel_suffix",
    "strip_nifti",
]

#: File name endings accepted as NIfTI (single-file NIfTI-1 or NIfTI-2, optionally gzip-compressed), matched
#: in any letter case.
NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: Environment variable that sets the largest number of voxels a NIfTI file may hold (see :func:`max_voxels`).
MAX_VOXELS_ENV = "FACTORSEG_MAX_VOXELS"
#: The limit when :data:`MAX_VOXELS_ENV` is unset: 2**28 voxels (512 x 512 x 1024).
DEFAULT_MAX_VOXELS = 2**28

_GZIP_MAGIC = b"\x1f\x8b"
# Deflate's largest expansion: a 258-byte match coded in 2 bits (1 bit each for length and distance codes).
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20
_NIFTI1_HEADER_SIZE = 348
_NIFTI2_HEADER_SIZE = 540
# Errors that nibabel raises for a header it cannot use or voxel data shorter than the header says.
_READ_ERRORS = (OSError, ValueError, ImageFileError, HeaderDataError)
# nnU-Net names channel files <case>_<XXXX>: a four-digit channel index after the case id.
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _nifti_suffix(name: str) -> str | None:
    """The NIfTI ending of a file name, lower-cased (``.nii.gz`` or ``.nii``), or None."""
    lower = name.lower()
    return next((s for s in NIFTI_SUFFIXES if lower.endswith(s)), None)


def is_nifti_name(name: str) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz`` (any letter case)."""
    return _nifti_suffix(name) is not None


def strip_nifti(name: str) -> str:
    """File name without its NIfTI ending (the case id of ``case.nii.gz``); other names unchanged."""
    suffix = _nifti_suffix(name)
    return name[: -len(suffix)] if suffix else name


def split_channel_suffix(stem: str) -> tuple[str, int | None]:
    """nnU-Net channel files: ``"case_0001"`` -> ``("case", 1)``; a stem without ``_XXXX`` -> ``(stem, None)``."""
    match = _CHANNEL_SUFFIX.match(stem)
    return (stem, None) if match is None else (match["case"], int(match["channel"]))


@dataclass(frozen=True)
class Volume:
    """A validated image: voxel data as float32 (scaling applied), its voxel-to-world affine and header.

    ``array`` is 3D, or 4D with channels last when read with ``expect_3d=False``; ``affine`` maps voxel
    indices to RAS+ world coordinates in millimetres (nibabel convention).
    """

    path: Path
    array: np.ndarray
    affine: np.ndarray
    header: nib.nifti1.Nifti1Header

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along the three spatial axes (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def _check_nifti_path(path: Path) -> str:
    """Refuse missing paths, folders, special files and names without a NIfTI ending; return the ending."""
    _stat_regular(path)
    suffix = _nifti_suffix(path.name)
    if suffix is None:
        raise InputError(f"{path}: not a NIfTI file (expected a name ending in .nii or .nii.gz)")
    return suffix


def max_voxels() -> int:
    """Largest number of voxels (all volumes of a file together) that a NIfTI file may hold.

    ``FACTORSEG_MAX_VOXELS`` in the environment, else :data:`DEFAULT_MAX_VOXELS` (2**28 = 268,435,456, a
    512 x 512 x 1024 volume: about 1 GiB as float32, and some 5 GB of peak memory to predict one channel
    with three classes). Files claiming more are refused from their header, before any voxel is read.
    """
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        try:
            number = float(raw)
        except ValueError:
            number = float("nan")
        value = int(number) if math.isfinite(number) and number == int(number) else 0
    if value < 1:
        raise InputError(f"{MAX_VOXELS_ENV} must be a positive whole number of voxels, got {raw!r}")
    return value


def _size(n: float) -> str:
    """Bytes in readable binary units (scientific notation beyond PiB: forged headers claim absurd sizes)."""
    if n >= 1024**6:
        return f"{float(n):.2g} bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def _check_gzip_magic(path: Path, raw: bytes) -> None:
    if not raw:
        raise InputError(f"{path}: file is empty")
    if raw[:2] != _GZIP_MAGIC:
        if _NIFTI1_HEADER_SIZE in {int.from_bytes(raw[:4], order) for order in ("little", "big")}:
            raise InputError(f"{path}: is an uncompressed NIfTI file named .nii.gz; rename it to .nii")
        raise InputError(f"{path}: not gzip-compressed although named .nii.gz (not a NIfTI file?)")


def _parse_header(path: Path, content: bytes) -> tuple[type[nib.Nifti1Image], nib.nifti1.Nifti1Header]:
    """NIfTI-1/NIfTI-2 header from the start of the uncompressed file, parsed unchecked (see below)."""
    if not content:
        raise InputError(f"{path}: file is empty")
    sizes = {int.from_bytes(content[:4], "little"), int.from_bytes(content[:4], "big")}
    if len(content) >= 4 and _NIFTI2_HEADER_SIZE in sizes:
        image_class: type[nib.Nifti1Image] = nib.Nifti2Image
        needed, magic_at, magic_ok = _NIFTI2_HEADER_SIZE, 4, b"n+2\0"
    elif len(content) >= 4 and _NIFTI1_HEADER_SIZE in sizes:
        image_class = nib.Nifti1Image
        needed, magic_at, magic_ok = _NIFTI1_HEADER_SIZE, 344, b"n+1\0"
    else:
        raise InputError(f"{path}: not a NIfTI file (no NIfTI-1/NIfTI-2 header)")
    if len(content) < needed:
        raise InputError(f"{path}: truncated NIfTI header ({len(content)} of {needed} bytes)")
    magic = content[magic_at : magic_at + 4]
    if magic != magic_ok:
        if magic[:3] in (b"ni1", b"ni2"):
            raise InputError(f"{path}: is the header of a .hdr/.img pair; convert it to a single-file .nii(.gz)")
        raise InputError(f"{path}: not a NIfTI file (bad magic string {magic!r})")
    try:
        header = image_class.header_class.from_fileobj(io.BytesIO(content[:needed]), check=False)
    except (HeaderDataError, ValueError) as exc:
        raise InputError(f"{path}: invalid NIfTI header ({_one_line(exc)})") from exc
    return image_class, header


def _spatial_shape(shape: tuple[int, ...], path: Path, expect_3d: bool) -> tuple[int, ...]:
    """Validate dimensionality; drop trailing singleton dimensions beyond the third (or fourth)."""
    if min(shape, default=0) < 1:
        raise InputError(f"{path}: invalid NIfTI header, image shape {tuple(shape)} has empty dimensions")
    keep = 3 if expect_3d else 4
    while len(shape) > keep and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3:
        raise InputError(f"{path}: is {len(shape)}D (shape {tuple(shape)}), expected a 3D volume")
    if len(shape) > keep:
        if expect_3d and len(shape) == 4:
            raise InputError(
                f"{path}: is 4D with {shape[3]} volumes (shape {tuple(shape)}), expected a single 3D volume"
            )
        raise InputError(f"{path}: is {len(shape)}D (shape {tuple(shape)}), expected 3D or 4D")
    return shape


def _check_header(header: nib.nifti1.Nifti1Header, path: Path, expect_3d: bool) -> tuple[int, ...]:
    """Reject headers with impossible geometry; return the validated (squeezed) data shape."""
    n_dims = int(header["dim"][0])
    if not 1 <= n_dims <= 7:
        raise InputError(f"{path}: invalid NIfTI header, dim[0] = {n_dims} (must be 1 to 7)")
    shape = _spatial_shape(tuple(int(v) for v in header.get_data_shape()), path, expect_3d)
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InputError(
            f"{path}: absurd header, voxel sizes (pixdim) must be positive, got {tuple(pixdim.tolist())}"
        )
    return shape


def _data_type(header: nib.nifti1.Nifti1Header, path: Path) -> np.dtype:
    """The voxel data type, if it holds real numbers (integers or floats); InputError otherwise.

    Complex data would otherwise be silently reduced to its real part, and colour (RGB24, RGBA32) data
    cannot be turned into intensities at all.
    """
    code = int(header["datatype"])
    try:
        dtype = np.dtype(header.get_data_dtype())
        label = str(header._data_type_codes.label[code])  # noqa: SLF001 - nibabel's code -> name table
    except (KeyError, TypeError, ValueError, HeaderDataError):
        raise InputError(f"{path}: invalid NIfTI header, unknown voxel data type code {code}") from None
    if dtype.kind == "c" or label.startswith("complex"):  # complex256 has no numpy type here (void)
        raise InputError(
            f"{path}: voxel data are complex numbers ({label}), which are not supported; "
            "save the magnitude (or the real part) as a real-valued image"
        )
    if dtype.fields:
        label = {128: "RGB24", 2304: "RGBA32"}.get(code, label)  # the NIfTI standard's names
        raise InputError(
            f"{path}: voxel data are colour values ({label}), which are not supported; "
            "convert the scan to a single-channel (grey-scale) image"
        )
    if dtype.kind not in "iuf" or dtype.itemsize == 0:  # binary, none, float128 where numpy lacks it
        raise InputError(f"{path}: voxel data type {label} is not supported (expected integers or floats)")
    return dtype


@dataclass(frozen=True)
class _Layout:
    """What a validated header says the file must hold: data shape, dtype, offset and size of the voxels."""

    shape: tuple[int, ...]  # validated, trailing singleton dimensions dropped
    full_shape: tuple[int, ...]  # as in the header
    dtype: np.dtype
    offset: int
    nbytes: int

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


def _layout(
    header: nib.nifti1.Nifti1Header, image_class: type[nib.Nifti1Image], path: Path, expect_3d: bool
) -> _Layout:
    shape = _check_header(header, path, expect_3d)
    dtype = _data_type(header, path)
    full_shape = tuple(int(v) for v in header.get_data_shape())
    raw_offset = float(header["vox_offset"])
    if not math.isfinite(raw_offset) or raw_offset < 0:
        raise InputError(f"{path}: invalid NIfTI header, vox_offset = {raw_offset}")
    minimum = _NIFTI2_HEADER_SIZE + 4 if image_class is nib.Nifti2Image else _NIFTI1_HEADER_SIZE + 4
    offset = int(raw_offset)
    if offset < minimum:  # nibabel would read (part of) the header as voxels
        raise InputError(
            f"{path}: invalid NIfTI header, vox_offset = {raw_offset:g} lies inside the header "
            f"(a single-file NIfTI stores its voxels from byte {minimum} on)"
        )
    voxels = math.prod(full_shape)
    return _Layout(shape, full_shape, dtype, offset, voxels * dtype.itemsize)


def _describe(layout: _Layout) -> str:
    dims = " x ".join(str(n) for n in layout.full_shape)
    return f"{dims} {layout.dtype.name} voxels ({_size(layout.nbytes)})"


def _check_size(layout: _Layout, path: Path, capacity: int, compressed: bool) -> None:
    """Compare what the header promises with what the file can hold, and with :func:`max_voxels`.

    ``capacity`` is the file size for ``.nii`` and ``1032 x`` the file size for ``.nii.gz`` (see
    :func:`_read_nifti`); both checks need the header only, so nothing is allocated for a forged one.
    """
    if layout.end > capacity:
        if compressed:
            holds = f"a gzip file of {capacity // _DEFLATE_MAX_RATIO} bytes decompresses to at most {_size(capacity)}"
        else:
            holds = f"the file holds {_size(max(capacity - layout.offset, 0))} after it"
        raise InputError(
            f"{path}: truncated or unreadable voxel data (the header describes {_describe(layout)} from byte "
            f"{layout.offset}, but {holds})"
        )
    limit = max_voxels()
    voxels = math.prod(layout.full_shape)
    if voxels > limit:
        raise InputError(
            f"{path}: the header describes {_describe(layout)} = {voxels:,} voxels, more than the limit of "
            f"{limit:,}; if the scan is genuine, raise the limit with the environment variable "
            f"{MAX_VOXELS_ENV}={voxels}"
        )


def _read_nifti(
    path: Path, expect_3d: bool, voxels: bool
) -> tuple[bytes, type[nib.Nifti1Image], nib.nifti1.Nifti1Header, _Layout]:
    """Validate a single-file NIfTI from its header, then (``voxels``) read exactly the bytes it describes.

    Memory is bounded before any voxel is read: only the first 540 (uncompressed) bytes are read to parse
    the header, which must describe real-valued voxels that the file can actually hold and no more than
    :func:`max_voxels` of them. For ``.nii`` the file size must be at least ``vox_offset + voxels x bytes``.
    For ``.nii.gz`` the trailer's ISIZE field is no bound (it is the size modulo 2**32, and forgeable), so the
    bound comes from the compressed size instead: deflate codes at best a 258-byte match in 2 bits, so no
    gzip stream decompresses to more than 1032 times its size (headers and further gzip members only make
    the file larger). A header promising more is refused as truncated or forged without decompressing
    anything; otherwise the stream is decompressed incrementally and exactly ``vox_offset + voxels x bytes``
    are kept (fewer means truncated). The rest of the stream is then read in 1 MiB pieces and discarded
    (at most as much as the image itself plus 1 MiB), because only reading to its end verifies the CRC and
    length of every gzip member: nibabel stops once it has the voxels, so a corrupted stream would
    otherwise give garbage voxels without an error. The header is parsed with ``check=False`` because
    nibabel silently repairs some absurd values (such as zero or negative voxel sizes), and we want to
    report those instead. Returns the uncompressed content (empty without ``voxels``), the nibabel image
    class, the header and what the header describes.
    """
    suffix = _check_nifti_path(path)
    compressed = suffix == ".nii.gz"
    handle, size = _open_regular(path)
    stage = "header"
    try:
        with handle:
            if compressed:
                _check_gzip_magic(path, handle.read(4))
                handle.seek(0)
                stream: BinaryIO = gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[assignment]
                capacity = size * _DEFLATE_MAX_RATIO
            else:
                stream, capacity = handle, size
            with stream:
                head = stream.read(_NIFTI2_HEADER_SIZE)
                if not compressed and head[:2] == _GZIP_MAGIC:
                    raise InputError(f"{path}: is gzip-compressed although named .nii; rename it to .nii.gz")
                image_class, header = _parse_header(path, head)
                layout = _layout(header, image_class, path, expect_3d)
                _check_size(layout, path, capacity, compressed)
                if not voxels:
                    return b"", image_class, header, layout
                stage = "voxels"
                stream.seek(0)
                content = stream.read(layout.end)
                if len(content) < layout.end:
                    raise InputError(
                        f"{path}: truncated or unreadable voxel data (the header describes {_describe(layout)} "
                        f"from byte {layout.offset}, the file holds {_size(max(len(content) - layout.offset, 0))})"
                    )
                if compressed:
                    allowance = layout.nbytes + _CHUNK
                    while piece := stream.read(_CHUNK):
                        allowance -= len(piece)
                        if allowance < 0:
                            raise InputError(
                                f"{path}: the gzip stream holds much more data than the {_describe(layout)} "
                                "its header describes (not a single NIfTI image?)"
                            )
    except InputError:
        raise
    except PermissionError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from exc
    except (OSError, EOFError, zlib.error) as exc:
        if compressed:
            raise InputError(f"{path}: corrupt or truncated gzip data ({_one_line(exc)})") from exc
        raise InputError(f"{path}: cannot be read while reading its {stage} ({_one_line(exc)})") from exc
    return content, image_class, header, layout


def _open_nifti(path: Path, expect_3d: bool) -> tuple[SpatialImage, tuple[int, ...], np.ndarray]:
    """Read and validate file and header; voxel data stay undecoded in the returned in-memory image.

    Returns the image, its validated data shape (trailing singleton dimensions dropped) and its affine.
    """
    content, image_class, _, layout = _read_nifti(path, expect_3d, voxels=True)
    try:
        img = image_class.from_bytes(content)
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: unreadable NIfTI file ({_one_line(exc)})") from exc
    return img, layout.shape, _checked_affine(img, path)


def _checked_affine(img: SpatialImage, path: Path) -> np.ndarray:
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: absurd header, the voxel-to-world affine is singular or not finite")
    return affine


def read_image(path: PathLike, expect_3d: bool = True) -> Volume:
    """Read and validate a NIfTI image; any problem raises a one-line :class:`InputError`.

    Checks, in order: the path is a regular ``.nii``/``.nii.gz`` file (not a folder, FIFO, device or socket,
    also behind a symbolic link) with gzip and NIfTI magic bytes, a complete header with positive voxel
    sizes, the expected dimensionality (3D; a singleton 4th dimension is dropped; ``expect_3d=False`` also
    allows 4D channel-last images), real-valued voxels (not complex or RGB), voxel data that the file can
    hold and no more than :func:`max_voxels` voxels (all from the header, before any voxel is read: see
    :func:`_read_nifti`), intact (de)compressed voxel data and a non-singular affine, and finally that no
    voxel is NaN or infinite.
    """
    path = Path(path)
    img, shape, affine = _open_nifti(path, expect_3d)
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: truncated or unreadable voxel data ({_one_line(exc)})") from exc
    data = data.reshape(shape)
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise InputError(f"{path}: {n_bad} of {data.size} voxels are NaN or infinite")
    return Volume(path=path, array=data, affine=affine, header=img.header)


def read_header(path: PathLike, expect_3d: bool = True) -> tuple[tuple[int, ...], np.ndarray]:
    """Validated data shape and affine of a NIfTI file from its header alone (cheap: voxels are not read).

    Runs the header checks of :func:`read_image` (regular file, NIfTI magic, dimensionality, voxel sizes, data
    type, the size the header promises against what the file can hold and :func:`max_voxels`, affine), so
    that a batch of inputs can be checked before any work starts; corrupt voxel data and NaN/infinite values
    are only found by :func:`read_image`. Returns the shape (trailing singleton dimensions dropped) and the
    voxel-to-world affine.
    """
    path = Path(path)
    _, _, header, layout = _read_nifti(path, expect_3d, voxels=False)
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: absurd header, the voxel-to-world affine is singular or not finite")
    return layout.shape, affine


def _grid_of(item: Volume | SpatialImage | PathLike, index: int) -> tuple[str, tuple[int, int, int], np.ndarray]:
    """(name, spatial shape, affine) of an image given as Volume, nibabel image or path (read and validated)."""
    if isinstance(item, Volume):
        return item.path.name, tuple(item.array.shape[:3]), item.affine  # type: ignore[return-value]
    if isinstance(item, SpatialImage):
        name = Path(item.get_filename()).name if item.get_filename() else f"image {index}"
        shape = tuple(int(v) for v in item.shape[:3])
        return name, shape, np.asarray(item.affine, dtype=np.float64)  # type: ignore[return-value]
    path = Path(item)
    shape, affine = read_header(path, expect_3d=False)  # the grid is in the header: no voxel is read
    return path.name, shape[:3], affine  # type: ignore[return-value]


def _box_corners(shape: Sequence[int], affine: np.ndarray, outer: bool) -> np.ndarray:
    """World coordinates (8, 3) of the corners of the voxel-centre box, or of the outer field of view."""
    lo, hi = (-0.5, 0.5) if outer else (0.0, 0.0)
    corners = np.array(list(product(*[(lo, n - 1 + hi) for n in shape])), dtype=np.float64)
    return corners @ affine[:3, :3].T + affine[:3, 3]


def _coverage(shape: Sequence[int], affine: np.ndarray, ref_shape: Sequence[int], ref_affine: np.ndarray) -> float:
    """Fraction of the reference field of view inside the other image's field of view.

    Estimated at the centres of a grid of up to 16 x 16 x 16 equal sub-boxes of the reference box, each mapped
    into the other image's voxel coordinates.
    """
    axes = [np.linspace(-0.5, n - 0.5, 2 * min(n, 16) + 1)[1::2] for n in ref_shape]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    to_other = np.linalg.inv(affine) @ ref_affine
    voxels = points @ to_other[:3, :3].T + to_other[:3, 3]
    inside = np.all((voxels >= -0.5 - 1e-6) & (voxels <= np.asarray(shape) - 0.5 + 1e-6), axis=1)
    return float(inside.mean())


def check_same_grid(
    images: Sequence[Volume | SpatialImage | PathLike],
    atol_mm: float = 1e-3,
    max_shift_voxels: float = 0.5,
    min_coverage: float | None = None,
) -> list[str]:
    """Check that co-registered images (e.g. the modalities of one case) share the first image's grid.

    Returns one warning per image whose grid differs from the first one but is close to it: the caller
    should resample it onto the first grid. Differences up to ``atol_mm`` are ignored. "Close" means that
    the field of view matches the first image's to within ``max_shift_voxels`` of its smallest voxel size
    (rounding in the affine, another orientation or resolution of the same box), or, when ``min_coverage``
    is given, that the image covers at least that fraction of the first image's field of view (a scan of
    the same anatomy with its own box, resolution and orientation, such as ISLES'22 FLAIR against DWI).
    Anything further apart raises :class:`InputError`: resampling would silently misalign or blank the
    channels (wrong file, or a header that lost the position); such images need registration first.
    """
    if not images:
        return []
    ref_name, ref_shape, ref_affine = _grid_of(images[0], 0)
    ref_voxel = float(np.linalg.norm(ref_affine[:3, :3], axis=0).min())
    tolerance = max(max_shift_voxels * ref_voxel, atol_mm)
    ref_outer = _box_corners(ref_shape, ref_affine, outer=True)
    warnings: list[str] = []
    for index, item in enumerate(images[1:], start=1):
        name, shape, affine = _grid_of(item, index)
        if shape == ref_shape:
            shift = np.abs(_box_corners(shape, affine, False) - _box_corners(ref_shape, ref_affine, False))
            if float(np.linalg.norm(shift, axis=1).max()) <= atol_mm:
                continue
        outer = _box_corners(shape, affine, outer=True)
        pairwise = np.linalg.norm(outer[:, None, :] - ref_outer[None, :, :], axis=2)
        distance = float(max(pairwise.min(axis=0).max(), pairwise.min(axis=1).max()))
        if distance <= tolerance:
            detail = f"field of view within {distance:.3g} mm"
        elif min_coverage is not None and (covered := _coverage(shape, affine, ref_shape, ref_affine)) >= min_coverage:
            detail = f"covers {covered:.0%} of its field of view"
        else:
            coverage = ""
            if min_coverage is not None:
                coverage = f", covers {_coverage(shape, affine, ref_shape, ref_affine):.0%} of it"
            raise InputError(
                f"{name}: on a different grid from {ref_name} (shape {shape} vs {ref_shape}, field of view "
                f"differs by up to {distance:.2f} mm{coverage}); register the images onto one grid first"
            )
        warnings.append(
            f"{name}: grid differs from {ref_name} (shape {shape} vs {ref_shape}, {detail}); "
            f"resampling it onto the grid of {ref_name}"
        )
    return warnings


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: PathLike,
    header: nib.nifti1.Nifti1Header | None = None,
    overwrite: bool = False,
    dtype: np.dtype | type | str | None = None,
) -> Path:
    """Save ``array`` as NIfTI with ``affine`` atomically; ``dtype`` defaults to the array's own dtype.

    With a ``header`` (for instance the input image's) its metadata is kept, the affine and data type are
    updated and its display window and intent are cleared; without one, qform and sform are both set to ``affine`` with code 1 (scanner coordinates).
    """
    path = Path(path)
    if not is_nifti_name(path.name):
        raise InputError(f"{path}: output name must end in .nii or .nii.gz")
    data = np.asarray(array) if dtype is None else np.asarray(array, dtype=dtype)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(data.dtype)
    if header is None:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    else:  # the input's display window and intent describe other data (e.g. a mask saved with a scan's header)
        img.header["cal_min"] = img.header["cal_max"] = 0
        img.header.set_intent("none")
    atomic_write(path, img.to_filename, overwrite=overwrite)
    return path
