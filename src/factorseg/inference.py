"""Prediction: sliding windows with Gaussian blending, flip test-time augmentation, ensembles,
and masks written in each input scan's own geometry with the dataset's own label values."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from rich.progress import Progress

from factorseg.bundle import LoadedModel
from factorseg.data.transforms import infer_transforms, invert_prediction
from factorseg.errors import InputError
from factorseg.io import read_image, save_nifti
from factorseg.nmf import set_nmf_iters

Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class InferenceOptions:
    """How to run the networks; ``None`` fields take the model's recipe defaults."""

    overlap: float | None = None
    blend: str | None = None
    sw_batch_size: int | None = None
    tta: bool | None = None
    nmf_iters: int | None = None
    device: str = "cpu"
    save_probabilities: bool = False
    overwrite: bool = False

    def resolved(self, defaults: dict[str, Any]) -> dict[str, Any]:
        out = dict(defaults)
        for key in ("overlap", "blend", "sw_batch_size", "tta", "nmf_iters"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if not 0 <= float(out.get("overlap", 0.5)) < 1:
            raise InputError(f"overlap must lie in [0, 1), got {out['overlap']}")
        return out


def flip_sets(spatial_dims: int) -> list[tuple[int, ...]]:
    """All mirror combinations (nnU-Net's mirroring TTA), identity first, as tensor dims of ``(B, C, ...)``."""
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


def activation(logits: torch.Tensor, mode: str) -> torch.Tensor:
    return torch.sigmoid(logits) if mode == "regions" else torch.softmax(logits, dim=1)


class SegmentationPredictor:
    """Ensemble of trained models sharing labels, channels and preprocessing."""

    def __init__(self, models: Sequence[LoadedModel], options: InferenceOptions | None = None,
                 networks: Sequence[Predictor] | None = None) -> None:
        if not models:
            raise InputError("no model given")
        first = models[0]
        for other in models[1:]:
            for key in ("labels", "channels", "transforms"):
                if other.config[key] != first.config[key]:
                    raise InputError(f"{other.path}: its {key} differ from {first.path}; an ensemble must share them")
        self.models, self.options = list(models), options or InferenceOptions()
        self.settings = self.options.resolved(first.config.get("inference", {}))
        self.labels, self.tcfg, self.channels = first.labels, first.transforms, first.channels
        self.transforms = infer_transforms(self.tcfg)
        device = torch.device(self.options.device)
        for m in self.models:
            m.model.to(device).eval()
            if self.settings.get("nmf_iters") is not None:
                set_nmf_iters(m.model, int(self.settings["nmf_iters"]))
        self.networks: list[Predictor] = list(networks) if networks is not None else [m.model for m in self.models]
        self.device = device

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Averaged class/region probabilities ``(C, *spatial)`` for a preprocessed ``(channels, *spatial)`` image."""
        x = torch.as_tensor(image)[None].to(self.device)
        flips = flip_sets(x.dim() - 2) if self.settings.get("tta") else [()]
        total = None
        with torch.inference_mode():
            for net in self.networks:
                for dims in flips:
                    xi = torch.flip(x, dims) if dims else x
                    logits = sliding_window_inference(
                        xi, self.tcfg.roi_size, int(self.settings.get("sw_batch_size", 1)), net,
                        overlap=float(self.settings.get("overlap", 0.5)), mode=self.settings.get("blend", "gaussian"),
                        sw_device=self.device, device=torch.device("cpu"),
                    )
                    probs = activation(logits.float(), self.labels.mode)
                    probs = torch.flip(probs, dims) if dims else probs
                    total = probs if total is None else total + probs
        assert total is not None
        return total[0] / (len(self.networks) * len(flips))

    def predict_case(self, case: dict[str, Any]) -> tuple[np.ndarray, torch.Tensor]:
        """Label map (dataset values) and probabilities, both on the grid of the case's first image."""
        n_files = len(case["image"])
        if n_files != len(self.channels) and n_files != 1:
            raise InputError(f"case {case['id']}: {n_files} images but the model expects {len(self.channels)} channels")
        data = self.transforms(dict(case))
        if data["image"].shape[0] != len(self.channels):
            raise InputError(
                f"case {case['id']}: {data['image'].shape[0]} channels but the model expects {len(self.channels)} "
                f"({', '.join(self.channels)})"
            )
        probs = self.probabilities(data["image"])
        probs = invert_prediction(probs, data, self.transforms, mode="linear")
        return self.labels.to_label(probs), torch.as_tensor(probs)

    def predict_to_folder(self, cases: Sequence[dict[str, Any]], out_dir: Path, progress: bool = True) -> list[Path]:
        """Predict every case and write ``<id>.nii.gz`` (and ``<id>_probabilities.nii.gz``) into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        targets = {c["id"]: out_dir / f"{c['id']}.nii.gz" for c in cases}
        if not self.options.overwrite:
            existing = [str(p) for p in targets.values() if p.exists()]
            if existing:
                raise InputError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --overwrite to replace")
        written = []
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("Predicting", total=len(cases))
            for case in cases:
                reference = read_image(case["image"][0], expect_3d=False)
                label, probs = self.predict_case(case)
                if label.shape != reference.array.shape[:3]:
                    raise InputError(f"case {case['id']}: prediction grid {label.shape} differs from input {reference.array.shape}")
                written.append(save_nifti(label, reference.affine, targets[case["id"]], header=reference.header,
                                          overwrite=self.options.overwrite))
                if self.options.save_probabilities:
                    save_nifti(np.moveaxis(probs.numpy().astype(np.float32), 0, -1), reference.affine,
                               out_dir / f"{case['id']}_probabilities.nii.gz", overwrite=self.options.overwrite)
                bar.advance(task)
        return written
