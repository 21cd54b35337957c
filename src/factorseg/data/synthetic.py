"""Seeded synthetic multi-modal brain MRI with tumours, written in the BraTS 2021 layout.

Used by ``factorseg demo`` and by tests that need realistic-looking data without shipping patient images.
Each case is a head (scalp and skull shells around a smoothly deformed brain with cortex, white matter, deep
grey nuclei, sulcal CSF and lateral ventricles) containing one or occasionally two glioma-like tumours with
the BraTS nesting: a necrotic centre (label 1) inside an enhancing rim (label 4), both inside edema (label
2). The four modalities (FLAIR, T1, T1ce, T2) follow the usual contrasts: CSF dark on T1 and FLAIR and bright
on T2, edema bright on FLAIR and T2, the rim bright on T1ce, necrosis dark on T1/T1ce and bright on T2.
Per-case contrast jitter, tissue texture, partial-volume blur, a multiplicative bias field, Rician noise and
arbitrary scanner units make the task learnable from local contrast without being trivial.

Geometry is defined in physical units normalised by half the smallest field-of-view extent, so the head
fills the field of view for any ``shape`` and anisotropic ``spacing`` samples the same anatomy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from factorseg.errors import InputError
from factorseg.io import save_nifti

__all__ = [
    "ED",
    "ET",
    "MODALITIES",
    "NCR",
    "Phantom",
    "Tissue",
    "brats_affine",
    "generate_case",
    "generate_phantom",
    "write_brats_dataset",
]

#: Channel order of generated images and file suffixes of the BraTS 2021 layout.
MODALITIES = ("flair", "t1", "t1ce", "t2")
#: BraTS 2021 label values: necrotic tumour core, peritumoral edema, enhancing tumour.
NCR, ED, ET = 1, 2, 4



class Tissue(IntEnum):
    """Tissue classes of the phantom (rows of the contrast table)."""

    AIR = 0
    SCALP = 1
    SKULL = 2
    CSF = 3
    GREY_MATTER = 4
    WHITE_MATTER = 5
    NECROSIS = 6
    EDEMA = 7
    ENHANCING = 8


# Mean intensity per tissue (rows, Tissue order) and modality (columns: flair, t1, t1ce, t2).
_CONTRAST = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # air
        [0.55, 0.90, 0.88, 0.55],  # scalp: fat-rich, bright on T1
        [0.07, 0.08, 0.09, 0.07],  # skull: cortical bone, dark everywhere
        [0.10, 0.22, 0.24, 1.00],  # CSF: suppressed on FLAIR, dark T1, bright T2
        [0.60, 0.50, 0.52, 0.62],  # grey matter
        [0.48, 0.72, 0.70, 0.45],  # white matter
        [0.50, 0.28, 0.26, 0.88],  # necrosis: dark T1/T1ce, bright T2
        [0.90, 0.42, 0.44, 0.80],  # edema: bright FLAIR/T2, mildly dark T1
        [0.70, 0.50, 1.30, 0.66],  # enhancing rim: gadolinium makes it bright on T1ce
    ],
    dtype=np.float32,
)
# Relative amplitude of the smooth intensity texture per tissue (tumour tissue is more heterogeneous).
_TEXTURE = np.array([0.0, 0.08, 0.10, 0.04, 0.05, 0.04, 0.12, 0.08, 0.10], dtype=np.float32)


def _axis_coords(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Per-axis voxel-centre coordinates, centred, in units of half the smallest field-of-view extent."""
    half = min(n * s for n, s in zip(shape, spacing, strict=True)) / 2.0
    return [((np.arange(n) - (n - 1) / 2.0) * s / half).astype(np.float32) for n, s in zip(shape, spacing, strict=True)]


def _smooth_fields(rng: np.random.Generator, coords: Sequence[np.ndarray], length: float, count: int) -> np.ndarray:
    """``count`` independent smooth Gaussian random fields, zero mean and unit variance at every voxel.

    Each field is a sum of Gaussian bumps of width ``length`` on a regular control grid with random weights;
    the kernel is separable, so the fields are evaluated with three small matrix products (milliseconds for
    64^3) instead of full-resolution filtering.
    """
    mats = []
    for x in coords:
        grid = np.arange(x[0] - 3 * length, x[-1] + 3 * length + length, length, dtype=np.float32)
        dist = np.abs(x[:, None] - grid[None, :]) / length
        m = np.where(dist < 4.0, np.exp(-0.5 * np.minimum(dist, 4.0) ** 2), 0.0).astype(np.float32)  # no denormals
        mats.append(m / np.sqrt((m**2).sum(axis=1, keepdims=True)))  # per-voxel unit variance, per axis
    weights = rng.standard_normal((count, *(m.shape[1] for m in mats)), dtype=np.float32)
    out = weights
    for m in mats:  # contract the first spatial axis each time; it reappears last, in order
        out = np.tensordot(out, m, axes=([1], [1]))
    return out


def _ellipsoid_radius(points: Sequence[np.ndarray], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) of axis-aligned broadcastable coordinate arrays."""
    return np.sqrt(sum(((p - c) / r) ** 2 for p, c, r in zip(points, centre, radii, strict=True)))


def _rotated_radius(points: Sequence[np.ndarray], centre: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Normalised radius of an ellipsoid with semi-axes ``radii`` rotated by the 3x3 matrix ``rot``."""
    rel = [p - c for p, c in zip(points, centre, strict=True)]
    total = 0.0
    for k in range(3):
        local = rel[0] * rot[0, k] + rel[1] * rot[1, k] + rel[2] * rot[2, k]
        total = total + (local / radii[k]) ** 2
    return np.sqrt(total)


def _connected_to(seed: tuple[int, ...], mask: np.ndarray) -> np.ndarray:
    """The connected component of ``mask`` that contains voxel ``seed`` (empty if ``seed`` is outside)."""
    components, _ = ndimage.label(mask)
    index = components[seed]
    return components == index if index else np.zeros_like(mask)


def _add_tumour(
    rng: np.random.Generator,
    points: Sequence[np.ndarray],
    coords: Sequence[np.ndarray],
    brain: np.ndarray,
    depth: np.ndarray,
    csf: np.ndarray,
    grey: np.ndarray,
    label: np.ndarray,
) -> None:
    """Draw one tumour into ``label`` (in place): irregular core (rim 4 around necrosis 1) inside edema 2."""
    candidates = np.flatnonzero((depth < 0.6) & brain & ~csf & (label == 0))
    if candidates.size == 0:
        return
    idx = np.unravel_index(rng.choice(candidates), brain.shape)
    centre = np.array([coords[a][idx[a]] for a in range(3)], dtype=np.float32)
    size = rng.uniform(0.12, 0.24)
    radii = (size * rng.uniform(0.75, 1.25, 3)).astype(np.float32)
    rot = Rotation.random(rng=rng).as_matrix().astype(np.float32)
    base = _rotated_radius(points, centre, radii, rot)
    fields = _smooth_fields(rng, coords, length=0.09, count=3)
    core_r = base + 0.22 * fields[0]
    core = _connected_to(idx, (core_r < 1.0) & brain & ~csf)
    # necrosis stays strictly inside the rim; edema always surrounds the core by at least one voxel
    necrotic = ndimage.binary_erosion(core) & (core_r + 0.12 * fields[1] < rng.uniform(0.5, 0.72))
    edema_r = base / rng.uniform(1.4, 2.1) + 0.25 * fields[2]
    edema = (edema_r < 1.0) & ~grey | (edema_r < 0.75) | ndimage.binary_dilation(core)
    edema = _connected_to(idx, edema & brain & ~csf | core) & ~core
    label[edema & (label == 0)] = ED
    label[core] = ET
    label[necrotic] = NCR


@dataclass(frozen=True)
class Phantom:
    """A generated case with its ground truth anatomy.

    ``image``: float32 ``(4, *shape)``, channels :data:`MODALITIES`, non-negative, arbitrary per-modality
    scanner units. ``label``: uint8 BraTS 2021 values 0/1/2/4. ``tissue``: uint8 :class:`Tissue` per voxel.
    ``brain``: bool brain mask (tumour included).
    """

    image: np.ndarray
    label: np.ndarray
    tissue: np.ndarray
    brain: np.ndarray


def generate_phantom(
    rng: np.random.Generator | int,
    shape: Sequence[int] = (64, 64, 64),
    spacing: float | Sequence[float] = 1.0,
    skull_strip: bool = False,
) -> Phantom:
    """Generate one synthetic case from a seed or generator, with its tissue map and brain mask.

    ``spacing`` (mm, scalar or per axis) only matters when anisotropic: the head fills the field of view
    whatever the grid. With ``skull_strip`` everything outside the brain is zero, as in released BraTS data.
    """
    rng = np.random.default_rng(rng)
    shape = tuple(int(n) for n in shape)
    spacings = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)))
    if len(shape) != 3 or min(shape) < 16 or min(spacings) <= 0:
        raise InputError(
            f"synthetic case needs a 3D shape of at least 16 voxels and positive spacing, got {shape}, {spacing}"
        )
    coords = _axis_coords(shape, spacings)
    points = np.ix_(*coords)  # broadcastable (n,1,1), (1,n,1), (1,1,n)

    # Head and brain: x is left-right, y anterior-posterior (the long axis), z inferior-superior (RAS).
    centre = rng.normal(0.0, 0.02, 3).astype(np.float32)
    head_radii = np.array([0.80, 0.93, 0.86], dtype=np.float32) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    head_radii = np.minimum(head_radii, [c[-1] * 0.98 for c in coords])
    coarse = _smooth_fields(rng, coords, length=0.25, count=2)
    fine = _smooth_fields(rng, coords, length=0.07, count=2)
    head_r = _ellipsoid_radius(points, centre, head_radii) + 0.015 * coarse[0]
    depth = _ellipsoid_radius(points, centre, head_radii * 0.84) + 0.04 * coarse[1]  # 1 on the brain surface
    brain = (depth < 1.0) & (head_r < 0.86)

    tissue = np.full(shape, Tissue.AIR, dtype=np.uint8)
    tissue[head_r < 1.0] = Tissue.SCALP
    tissue[head_r < 0.93] = Tissue.SKULL
    tissue[head_r < 0.86] = Tissue.CSF
    tissue[brain] = Tissue.WHITE_MATTER
    grey = brain & (depth + 0.05 * fine[0] > 0.8)
    nuclei_r = rng.uniform(0.09, 0.13)
    for side in (-1.0, 1.0):  # deep grey nuclei (basal ganglia / thalamus), one per hemisphere
        nucleus = centre + np.array([side * 0.17, -0.05, 0.0], dtype=np.float32)
        grey |= _ellipsoid_radius(points, nucleus, np.array([0.7, 1.2, 0.9]) * nuclei_r) < 1.0
    tissue[grey & brain] = Tissue.GREY_MATTER
    sulci = brain & (depth > 0.86) & (fine[1] > 0.9)
    ventricle_scale = rng.uniform(0.7, 1.4)
    ventricles = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        v_centre = centre + np.array([side * 0.09, 0.0, 0.12], dtype=np.float32)
        v_radii = np.array([0.055, 0.27, 0.08], dtype=np.float32) * ventricle_scale
        ventricles |= _ellipsoid_radius(points, v_centre, v_radii) + 0.15 * coarse[0] < 1.0
    csf = (sulci | ventricles) & brain
    tissue[csf] = Tissue.CSF

    label = np.zeros(shape, dtype=np.uint8)
    for _ in range(2 if rng.random() < 0.2 else 1):
        _add_tumour(rng, points, coords, brain, depth, csf, grey, label)
    for value, cls in ((ED, Tissue.EDEMA), (ET, Tissue.ENHANCING), (NCR, Tissue.NECROSIS)):
        tissue[label == value] = cls

    # Intensities: per-case contrast jitter, texture, partial-volume blur, bias field, Rician noise.
    contrast = _CONTRAST * np.exp(rng.normal(0.0, 0.05, _CONTRAST.shape)).astype(np.float32)
    texture = _smooth_fields(rng, coords, length=0.05, count=4)
    bias = _smooth_fields(rng, coords, length=0.6, count=4)
    image = np.empty((4, *shape), dtype=np.float32)
    for m in range(4):
        clean = contrast[tissue, m] * (1.0 + _TEXTURE[tissue] * texture[m])
        clean = ndimage.gaussian_filter(clean, 0.6, truncate=3.0)  # point-spread function ~0.6 voxel
        clean *= np.exp(0.12 * bias[m])
        noise = rng.uniform(0.015, 0.035)
        real = clean + noise * rng.standard_normal(shape, dtype=np.float32)
        imag = noise * rng.standard_normal(shape, dtype=np.float32)
        image[m] = np.sqrt(real * real + imag * imag) * rng.uniform(300.0, 1500.0)
    if skull_strip:
        image *= brain
    return Phantom(image=image, label=label, tissue=tissue, brain=brain)


def generate_case(
    rng: np.random.Generator | int,
    shape: Sequence[int] = (64, 64, 64),
    spacing: float | Sequence[float] = 1.0,
    skull_strip: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic case: ``(image, label)`` of :func:`generate_phantom` (see there)."""
    phantom = generate_phantom(rng, shape=shape, spacing=spacing, skull_strip=skull_strip)
    return phantom.image, phantom.label


def brats_affine(shape: Sequence[int], spacing: float | Sequence[float] = 1.0) -> np.ndarray:
    """RAS voxel-to-world affine with the given voxel size and the volume centred on the world origin."""
    spacings = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    affine = np.diag([*spacings, 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2.0 * spacings
    return affine


def write_brats_dataset(
    out_dir: str | os.PathLike[str],
    n_cases: int,
    seed: int = 0,
    shape: Sequence[int] = (64, 64, 64),
    overwrite: bool = False,
    skull_strip: bool = False,
) -> list[Path]:
    """Write ``n_cases`` synthetic cases in the BraTS 2021 layout and return the case folders.

    Case ``i`` is ``out_dir/BraTS2021_{i:05d}/BraTS2021_{i:05d}_{flair,t1,t1ce,t2,seg}.nii.gz`` (float32
    images, uint8 labels, 1 mm, centred RAS affine). Each case has its own seed spawned from ``seed``, so
    a case does not depend on ``n_cases``. Files are written atomically; existing files are refused
    unless ``overwrite``.
    """
    if n_cases < 1:
        raise InputError(f"number of synthetic cases must be at least 1, got {n_cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = brats_affine(shape)
    case_dirs = []
    for i, case_seed in enumerate(np.random.SeedSequence(seed).spawn(n_cases)):
        image, label = generate_case(np.random.default_rng(case_seed), shape=shape, skull_strip=skull_strip)
        case_id = f"BraTS2021_{i:05d}"
        case_dir = out / case_id
        case_dir.mkdir(exist_ok=True)
        for name, channel in zip(MODALITIES, image, strict=True):
            save_nifti(channel, affine, case_dir / f"{case_id}_{name}.nii.gz", overwrite=overwrite)
        save_nifti(label, affine, case_dir / f"{case_id}_seg.nii.gz", overwrite=overwrite)
        case_dirs.append(case_dir)
    return case_dirs
