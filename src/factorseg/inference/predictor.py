"""``factorseg.Predictor``: segmentation from Python, the same computation as ``factorseg predict``.

A thin front end to :class:`factorseg.inference.pipeline.SegmentationPredictor` (sliding windows, Gaussian blending,
flip TTA, ensembles, masks on the input's grid with the dataset's label values): the same options, the same
defaults (the model's) and the same checks, so that a mask equals ``factorseg predict``'s bit for bit.

Example (the model shipped with the package, on a synthetic scan)::

    >>> import numpy as np
    >>> import factorseg
    >>> predictor = factorseg.Predictor.from_pretrained("hippocampus")
    >>> scan = np.random.default_rng(0).normal(size=(32, 40, 32)).astype(np.float32)
    >>> result = predictor.predict(scan, affine=np.eye(4))
    >>> result.mask.shape, result.probabilities.shape
    ((32, 40, 32), (3, 32, 40, 32))
    >>> sorted(set(np.unique(result.mask)) - {0, 1, 2})
    []
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from factorseg.errors import InputError

if TYPE_CHECKING:
    import torch

    from factorseg.inference.loading import LoadedModel
    from factorseg.inference.pipeline import SegmentationPredictor

PathLike = Union[str, Path]
#: What :meth:`Predictor.predict` takes: a NIfTI path, one case's per-channel paths (in the model's channel
#: order), or voxels ``(C, X, Y, Z)`` / ``(X, Y, Z)`` as a numpy array or torch tensor.
Images = Union[PathLike, Sequence[PathLike], np.ndarray, "torch.Tensor"]

_OPTIONS = ("overlap", "blend", "sw_batch_size", "tta", "nmf_iters")


@dataclass
class Prediction:
    """One case's result on the input's grid.

    ``mask``: ``(X, Y, Z)`` label map with the dataset's own label values (as ``factorseg predict`` writes it);
    ``probabilities``: ``(C, X, Y, Z)`` float32 class (softmax) or region (sigmoid) probabilities, in the order
    of the model's label names; ``affine``: the 4x4 voxel-to-world matrix of the grid.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    affine: np.ndarray


def _checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """Inference options checked with the config's own types and limits (``factorseg.config.SCHEMA``)."""
    from factorseg.config import SCHEMA

    specs = SCHEMA["inference"].keys
    for key, value in options.items():
        if value is not None:
            specs[key].check(value, key)
    return options


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, Path))


class Predictor:
    """Segment scans with a trained model (or an ensemble) from Python.

    Build one with :meth:`from_pretrained` (a model shipped with the package) or :meth:`from_file` (a bundle
    ``.pt``, a Lightning ``.ckpt`` of ``factorseg train``, or an exported ONNX / TorchScript graph with its sidecar
    config), or from models loaded with :func:`factorseg.inference.loading.load_model`, which are left as they are
    (the predictor runs its own copy where the device or ``nmf_iters`` differ).
    Options are those of ``factorseg predict``; ``None`` takes the model's own default:

    * ``device``: ``cpu`` (default), ``cuda`` or ``cuda:N``;
    * ``overlap``: sliding-window overlap in [0, 1); ``blend``: ``gaussian`` or ``constant``;
    * ``sw_batch_size``: windows per forward pass (1 to 1024); ``tta``: average over all axis flips;
    * ``nmf_iters``: NMF iterations at test time (0 to 1000; fewer = faster; fixed in exported graphs).

    Bad options or inputs raise a one-line :class:`factorseg.errors.InputError`. Inputs are never modified.

    Example::

        >>> import factorseg
        >>> predictor = factorseg.Predictor.from_pretrained("hippocampus", tta=False, sw_batch_size=2)
        >>> predictor.channels, predictor.label_names
        (['MRI'], ['background', 'Anterior', 'Posterior'])
    """

    def __init__(self, models: LoadedModel | Sequence[LoadedModel], *, device: str = "cpu",
                 overlap: float | None = None, blend: str | None = None, sw_batch_size: int | None = None,
                 tta: bool | None = None, nmf_iters: int | None = None) -> None:
        from factorseg.inference import pipeline as inference
        from factorseg.inference.loading import LoadedModel

        loaded = [models] if isinstance(models, LoadedModel) else list(models)
        if not isinstance(device, str):
            raise InputError(f"device must be a text such as 'cpu', 'cuda' or 'cuda:0', got {device!r}")
        options = _checked_options({"overlap": overlap, "blend": blend, "sw_batch_size": sw_batch_size,
                                    "tta": tta, "nmf_iters": nmf_iters})
        self.options = inference.InferenceOptions(**options, device=device)
        #: The ensemble that does the work (:class:`factorseg.inference.pipeline.SegmentationPredictor`).
        self.engine: SegmentationPredictor = inference.SegmentationPredictor(loaded, self.options)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name: str, **options: Any) -> Predictor:
        """A model shipped with the package, by name (``factorseg.inference.loading.shipped_models()`` lists them).

        >>> import factorseg
        >>> factorseg.Predictor.from_pretrained("hippocampus").channels
        ['MRI']
        """
        from factorseg.inference.loading import load_model, shipped_models

        shipped = shipped_models()
        if not isinstance(name, str) or name not in shipped:
            names = ", ".join(sorted(shipped)) or "none"
            raise InputError(f"{name!r} is not a shipped model (shipped: {names}); use Predictor.from_file for a file")
        return cls(load_model(shipped[name]), **options)

    @classmethod
    def from_file(cls, path: PathLike | Sequence[PathLike], **options: Any) -> Predictor:
        """A model file: bundle (``.pt``), Lightning checkpoint (``.ckpt``) or exported graph (``.onnx`` run with
        onnxruntime, or TorchScript; its ``<file>.json`` config beside it). Several paths make an ensemble.

        Files are read with ``torch.load(weights_only=True)`` (tensors and plain data, never code).

        >>> import factorseg
        >>> from factorseg.inference.loading import shipped_models
        >>> factorseg.Predictor.from_file(shipped_models()["hippocampus"]).label_names
        ['background', 'Anterior', 'Posterior']
        """
        from factorseg.inference.loading import load_model

        paths = [Path(path)] if _is_path(path) else [Path(p) for p in path]  # type: ignore[union-attr]
        if not paths:
            raise InputError("from_file: no model file given")
        return cls([load_model(p) for p in paths], **options)

    # ------------------------------------------------------------------ what the model expects
    @property
    def channels(self) -> list[str]:
        """Input channel names, in the order :meth:`predict` takes them."""
        return list(self.engine.channels)

    @property
    def label_names(self) -> list[str]:
        """Output names, the order of :attr:`Prediction.probabilities`' channels."""
        return list(self.engine.labels.names)

    # ------------------------------------------------------------------ prediction
    def _case(self, images: Sequence[PathLike]) -> dict[str, Any]:
        from factorseg.io import strip_nifti

        n = len(self.channels)
        if len(images) not in (1, n):
            raise InputError(f"give one file (3D, or 4D with {n} volumes) or {n} channel files "
                             f"({', '.join(self.channels)}), got {len(images)} files")
        for p in images:
            if Path(p).is_dir():
                raise InputError(f"{p}: is a folder; predict takes one case's files (factorseg predict takes folders)")
        return {"id": strip_nifti(Path(images[0]).name), "image": [str(p) for p in images]}

    def _array_case(self, images: Any, affine: Any, folder: Path) -> dict[str, Any]:
        """The voxels written as one float32 NIfTI per channel into ``folder`` (the file path's own pipeline)."""
        from factorseg.io import save_nifti

        if type(images).__module__.startswith("torch"):
            images = images.detach().cpu().numpy()
        array = np.asarray(images)
        if array.dtype.kind not in "uif" or array.ndim not in (3, 4):
            raise InputError(f"images must be real numbers shaped (C, X, Y, Z) or (X, Y, Z), got {array.ndim}D "
                             f"{array.dtype}")
        if array.ndim == 3:
            array = array[None]
        n = len(self.channels)
        if array.shape[0] != n:
            raise InputError(f"images have {array.shape[0]} channels but the model expects {n} "
                             f"({', '.join(self.channels)}), shaped (C, X, Y, Z)")
        if min(array.shape[1:]) < 1:
            raise InputError(f"images have an empty grid {tuple(array.shape[1:])}")
        values = array.astype(np.float32, copy=False)  # what the file loader makes of any voxel type
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise InputError(f"images: {bad} of {values.size} voxels are NaN or infinite (as float32)")
        matrix = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
            raise InputError(f"affine must be a finite, invertible 4x4 matrix, got shape {matrix.shape}")
        paths = [save_nifti(values[c], matrix, folder / f"case_{c:04d}.nii") for c in range(n)]
        return {"id": "array", "image": [str(p) for p in paths]}

    def _run(self, images: Images, affine: Any) -> tuple[Prediction, Any]:
        """The prediction and the header of the reference file (None for voxels given as an array)."""
        import nibabel as nib

        if _is_path(images) or (isinstance(images, (list, tuple)) and images and all(map(_is_path, images))):
            if affine is not None:
                raise InputError("affine is only for images given as an array; a file has its own")
            case = self._case([images] if _is_path(images) else list(images))  # type: ignore[list-item]
            mask, probs = self.engine.predict_case(case)
            reference = nib.load(case["image"][0])
            header, grid_affine = reference.header, np.asarray(reference.affine, dtype=np.float64)
            shape = tuple(reference.shape[:3])
        elif isinstance(images, (list, tuple)):
            raise InputError("images must be a NIfTI path, a list of one case's channel paths, or an array")
        else:
            with tempfile.TemporaryDirectory(prefix="factorseg-") as folder:
                case = self._array_case(images, affine, Path(folder))
                mask, probs = self.engine.predict_case(case)
                reference = nib.load(case["image"][0])
                grid_affine, shape = np.asarray(reference.affine, dtype=np.float64), tuple(reference.shape[:3])
            header = None
        if mask.shape != shape:
            raise InputError(f"case {case['id']}: prediction grid {mask.shape} differs from input {shape}")
        return Prediction(mask, probs.numpy(), grid_affine), header

    def predict(self, images: Images, affine: Any = None) -> Prediction:
        """Segment one case: a NIfTI path, its per-channel paths (model order), or voxels ``(C, X, Y, Z)`` /
        ``(X, Y, Z)`` (numpy or torch) on the grid ``affine`` (4x4 voxel-to-world; default identity).

        Arrays go through the very pipeline of files (they are written as float32 NIfTI to a temporary folder,
        removed afterwards), so an array and the file it was read from give the same mask.

        >>> import numpy as np, factorseg
        >>> predictor = factorseg.Predictor.from_pretrained("hippocampus")
        >>> result = predictor.predict(np.zeros((1, 24, 24, 24), np.float32), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
        >>> result.mask.shape, result.affine.shape
        ((24, 24, 24), (4, 4))
        """
        return self._run(images, affine)[0]

    def predict_to_nifti(self, images: Images, output_path: PathLike, affine: Any = None,
                         overwrite: bool = False) -> Path:
        """Segment one case (as :meth:`predict`) and write its mask to ``output_path`` (``.nii`` / ``.nii.gz``),
        atomically, with the input file's header (as ``factorseg predict`` does) or ``affine`` for an array.

        An existing file is refused (before any work) unless ``overwrite``; so is an input file. Returns the path.

        >>> import numpy as np, factorseg, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "mask.nii.gz"
        >>> factorseg.Predictor.from_pretrained("hippocampus").predict_to_nifti(np.zeros((24, 24, 24)), out).name
        'mask.nii.gz'
        """
        from factorseg.io import is_nifti_name, save_nifti

        out = Path(output_path)
        if not is_nifti_name(out.name):
            raise InputError(f"{out}: output name must end in .nii or .nii.gz")
        if out.is_dir():
            raise InputError(f"{out}: is a folder, cannot write a file there")
        if not out.parent.is_dir():
            raise InputError(f"{out}: output folder {out.parent} does not exist")
        if out.exists() and not overwrite:
            raise InputError(f"{out}: already exists (pass overwrite=True to replace it)")
        inputs = [images] if _is_path(images) else list(images) if isinstance(images, (list, tuple)) else []
        if out.exists() and any(_is_path(p) and Path(p).exists() and Path(p).resolve() == out.resolve()
                                for p in inputs):
            raise InputError(f"{out}: is an input file; choose another output")
        result, header = self._run(images, affine)
        return save_nifti(result.mask, result.affine, out, header=header, overwrite=overwrite)


__all__ = ["Images", "Prediction", "Predictor"]
