"""MONAI bundle export: a factorseg model as a bundle that ``python -m monai.bundle run`` executes.

Layout (MONAI's bundle specification)::

    DIR/configs/metadata.json         versions, required packages (factorseg included), network_data_format
    DIR/configs/inference.json        network_def (built through factorseg's registry), preprocessing,
                                      inferer, postprocessing, evaluator; run with dataset_dir / output_dir
    DIR/configs/metadata_schema.json  the metadata requirements, for verify_metadata without a download
    DIR/models/model.pt               the weights: a plain state dict (loads with weights_only=True)
    DIR/docs/README.md, DIR/LICENSE

The pipeline is factorseg's own, spelt out: the same loading (:class:`factorseg.data.transforms.LoadCased`),
the same geometry steps (:func:`factorseg.data.transforms.geometry_steps`), MONAI's sliding-window inferer
with the model's overlap and blending, the same activation, inversion to the scan's grid
(``Invertd`` with linear interpolation) and discretisation (:class:`factorseg.data.transforms.ToLabeld`),
so that its masks agree with ``factorseg predict``. Flip TTA and ensembles are not part of a bundle.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from factorseg import __version__, models
from factorseg.config import InferenceConfig
from factorseg.data.transforms import IMAGE_KEY, TransformConfig, geometry_steps, nonzero
from factorseg.errors import InputError
from factorseg.inference.export import check_nmf_iters
from factorseg.inference.loading import LoadedModel
from factorseg.io import atomic_write, write_json

#: The metadata schema MONAI's own bundles name (downloaded by ``verify_metadata`` when no local copy is given).
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_FILE = "metadata_schema.json"  # shipped beside this module
PAPER = ("Ashtari et al., Factorizer: A Scalable Interpretable Approach to Context Modeling for Medical Image "
         "Segmentation, Medical Image Analysis 84 (2023) 102706")
_MR_NAMES = {"mri", "mr", "t1", "t1w", "t1ce", "t1gd", "t1c", "t2", "t2w", "flair", "dwi", "adc", "pd"}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _modality(channels: list[str]) -> str:
    names = {c.lower() for c in channels}
    if names & {"ct"}:
        return "CT"
    return "MR" if names & _MR_NAMES else "n/a"


def _label_channels(labels: dict[str, Any]) -> dict[str, str]:
    """Output channel -> meaning: background first for classes, one channel per region for regions."""
    return {str(i): str(name) for i, name in enumerate(labels["names"])}


def metadata(config: dict[str, Any]) -> dict[str, Any]:
    """``configs/metadata.json`` for a bundle config (model, labels, transforms, channels, inference)."""
    labels, channels = config["labels"], list(config["channels"])
    roi = [int(r) for r in config["transforms"]["roi_size"]]
    regions = labels["mode"] == "regions"
    classes = ", ".join(f"{i}: {n}" for i, n in _label_channels(labels).items())
    pred = (f"{len(labels['names'])} channels of {'sigmoid region' if regions else 'softmax class'} probabilities "
            f"({classes}); the written masks hold the dataset's label values {labels['values']}")
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by factorseg {__version__}"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"factorseg": __version__, "nibabel": _version("nibabel")},
        "name": f"factorseg {config['model']['name']}",
        "task": f"3D segmentation ({', '.join(labels['names'][0 if regions else 1:])})",
        "description": f"A {config['model']['name']} network trained with factorseg, exported as a MONAI bundle.",
        "authors": "factorseg",
        "copyright": "factorseg contributors",
        "data_type": "nibabel",
        "image_classes": f"{len(channels)} channel(s): {', '.join(channels)}; z-scored per channel over non-zero voxels",
        "label_classes": f"dataset label values {labels['values']} ({labels['convention']} convention)",
        "pred_classes": pred,
        "intended_use": "research only, not for clinical use",
        "references": [PAPER],
        "network_data_format": {
            "inputs": {
                IMAGE_KEY: {
                    "type": "image", "format": "magnitude", "modality": _modality(channels),
                    "num_channels": len(channels), "spatial_shape": roi, "dtype": "float32", "value_range": [],
                    "is_patch_data": True, "channel_def": {str(i): c for i, c in enumerate(channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image", "format": "segmentation", "num_channels": len(labels["names"]),
                    "spatial_shape": roi, "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                    "channel_def": _label_channels(labels),
                }
            },
        },
    }


def _spelt_out(value: Any) -> Any:
    """Transform arguments in MONAI's config syntax (functions as ``$`` expressions)."""
    if value is nonzero:
        return "$nonzero"
    if isinstance(value, (list, tuple)):
        return [_spelt_out(v) for v in value]
    return value


def _preprocessing(transforms: dict[str, Any]) -> dict[str, Any]:
    steps = [{"_target_": "factorseg.data.transforms.LoadCased", "label_key": None}]
    for cls, kwargs in geometry_steps(TransformConfig.from_dict(transforms), [IMAGE_KEY], ["bilinear"]):
        steps.append({"_target_": cls.__name__, **{k: _spelt_out(v) for k, v in kwargs.items()}})
    return {"_target_": "Compose", "transforms": steps}


def _network_def(config: dict[str, Any], settings: InferenceConfig) -> dict[str, Any]:
    model = models.explicit_architecture(dict(config["model"]))
    if settings.nmf_iters is not None and "nmf_iters" in model:
        model["nmf_iters"] = int(settings.nmf_iters)
    name = model.pop("name")
    return {"_target_": "factorseg.models.create", "name": name, **model}


def inference_config(config: dict[str, Any], settings: InferenceConfig) -> dict[str, Any]:
    """``configs/inference.json``: the model's own pipeline in MONAI's config syntax, predicting with
    ``settings`` (overlap, sw_batch_size, blend, nmf_iters; flip TTA is refused: a bundle has none)."""
    if settings.tta:
        raise InputError("a MONAI bundle has no flip TTA; export without --tta (inference.tta=false)")
    labels = config["labels"]
    regions = labels["mode"] == "regions"
    dtype = "$numpy.uint8" if max(labels["values"]) < 256 else "$numpy.int16"
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch",
                    "$from factorseg.data.transforms import nonzero"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*'))))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": _network_def(config, settings),
        "network": "$@network_def.to(@device)",
        "preprocessing": _preprocessing(config["transforms"]),
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(r) for r in config["transforms"]["roi_size"]],
                    "sw_batch_size": settings.sw_batch_size, "overlap": settings.overlap, "mode": settings.blend,
                    "sw_device": "@device", "device": "$torch.device('cpu')"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": regions, "softmax": not regions},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": IMAGE_KEY,
                 "nearest_interp": False, "to_tensor": True},
                {"_target_": "factorseg.data.transforms.ToLabeld", "keys": "pred", "labels": labels},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "",
                 "separate_folder": False, "resample": False, "output_dtype": dtype, "print_log": False},
            ],
        },
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}, "strict": True, "map_location": "@device"},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": [],
        "run": ["$@evaluator.run()"],
    }


def _readme(meta: dict[str, Any]) -> str:
    """``docs/README.md`` from the bundle's metadata."""
    return f"""# {meta['name']}

{meta['description']}

- Input: {meta['image_classes']}.
- Output: {meta['pred_classes']}.
- Reference: {PAPER}.
- {meta['intended_use'].capitalize()}.

## Run

    pip install "factorseg=={__version__}" "monai=={meta['monai_version']}"
    cd BUNDLE
    python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/scans --output_dir masks

Every `*.nii` / `*.nii.gz` file in `dataset_dir` is one case (a 4D file when the model takes several
channels); masks are written in each scan's own geometry with the dataset's label values. The pipeline
is factorseg's: `factorseg predict -m models/... ` gives the same masks (flip TTA and ensembles are not in
the bundle).

## Verify

    python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath configs/{SCHEMA_FILE}
    python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json

`configs/{SCHEMA_FILE}` holds the metadata requirements so that verification needs no download; give another
`--filepath` to have MONAI download its own schema (`{SCHEMA_URL}`).
"""


_LICENSE = """Copyright factorseg contributors

Licensed under the Apache License, Version 2.0 (the "License"); you may not use this bundle except in
compliance with the License. You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is
distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and limitations under the License.

The weights were trained on the data named in configs/metadata.json; its own licence terms apply to them.
"""


def export_monai_bundle(loaded: LoadedModel, out_dir: str | Path, nmf_iters: int | None = None,
                        overwrite: bool = False) -> Path:
    """Write the MONAI bundle of a loaded PyTorch model into ``out_dir``; returns ``out_dir``.

    It predicts with the model's own inference settings; ``nmf_iters`` sets its test-time NMF iterations
    (default: the config's ``inference.nmf_iters``, else as trained). The folder is built next to ``out_dir``
    and moved into place, so an interrupted export leaves nothing half-written; ``loaded`` is left as it is.
    """
    model, config = loaded.model, loaded.config  # .model refuses an exported graph
    check_nmf_iters(model, nmf_iters)
    settings = InferenceConfig.from_dict(config.get("inference", {}))
    if nmf_iters is not None:
        settings = dataclasses.replace(settings, nmf_iters=nmf_iters)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        for sub in ("configs", "models", "docs"):
            (work / sub).mkdir(parents=True)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save(state, work / "models" / "model.pt")
        meta = metadata(config)
        write_json(work / "configs" / "metadata.json", meta)
        write_json(work / "configs" / "inference.json", inference_config(config, settings))
        files = {
            f"configs/{SCHEMA_FILE}": resources.files("factorseg.inference").joinpath(SCHEMA_FILE).read_text(),
            "docs/README.md": _readme(meta),
            "LICENSE": _LICENSE,
        }
        for name, text in files.items():
            atomic_write(work / name, text.encode(), overwrite=True)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
