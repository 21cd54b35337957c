"""Importing the authors' Lightning checkpoints (``factorseg import-checkpoint``, :mod:`factorseg.bundles.official`).

Reference files: ``../shared/fixtures/official_factorizer`` (made with the authors' code; read only, never
copied here). Tests that need them skip where that folder is absent.
"""

from __future__ import annotations

import builtins
import json
import os
import pathlib
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from factorseg.inference.loading import load_model
from factorseg.bundles.format import build_model
from factorseg.cli import main
from factorseg.errors import InputError
from factorseg.bundles.official import Placeholder, convert_state_dict, import_official_checkpoint, read_official_checkpoint

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official_factorizer"
SMALL = {"brats": "brats_small", "isles": "isles_small"}


@pytest.fixture(scope="module")
def fixtures() -> Path:
    if not (FIXTURES / "fixtures.json").is_file():
        pytest.skip(f"reference fixtures {FIXTURES} are absent")
    return FIXTURES


@pytest.fixture(scope="module")
def fixture_info(fixtures: Path) -> dict[str, Any]:
    return json.loads((fixtures / "fixtures.json").read_text())


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _refused(capsys: pytest.CaptureFixture, argv: list[str], folder: Path, before: list[Path]) -> str:
    """Run the CLI; assert exit 2, one ``factorseg: error:`` line, no traceback, and no file added to ``folder``."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("factorseg: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert _files(folder) == before
    return lines[0]


# ---------------------------------------------------------------------------------------------- mapping


@pytest.mark.parametrize("preset", ["brats", "isles"])
def test_full_size_key_mapping(fixture_info: dict[str, Any], preset: str) -> None:
    shapes = fixture_info["full_size_state_dict_shapes"][preset]
    source = {k: torch.zeros(s) for k, s in shapes.items()}
    cfg, ours = convert_state_dict(source, None, variant="swin")

    widths = [32, 64, 128, 256, 512]
    assert cfg["widths"] == widths and cfg["encoder_depths"] == [1] * 5 and cfg["decoder_depths"] == [1] * 4
    assert cfg["in_channels"] == (4 if preset == "brats" else 2)
    assert cfg["out_channels"] == (3 if preset == "brats" else 1)
    assert cfg["head_dim"] == (8 if preset == "brats" else 4)
    assert cfg["window_size"] == (8 if preset == "brats" else 4)
    assert cfg["mlp_ratio"] == (2.0 if preset == "brats" else 4.0)
    assert cfg["pos_embed_size"] == ([8, 8, 8] if preset == "brats" else [4, 4, 4])
    assert cfg["rank"] == 1 and cfg["deep_supervision"] and cfg["ds_heads"] == 3
    # Every source tensor used exactly once: the element counts add up and nothing is duplicated.
    assert len(ours) == len(source)
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in source.values())
    # Spot checks of the index mapping: the authors' decoder stage j is our level 3 - j.
    assert list(ours["up.3.conv.weight"].shape) == shapes["net.decoder.blocks.0.upsample.weight"]
    assert list(ours["fuse.0.weight"].shape) == [32, 64, 1, 1, 1]
    assert list(ours["aux_heads.1.weight"].shape) == shapes["net.heads.2.weight"]
    assert list(ours["pos_embed.weight"].shape) == shapes["net.encoder.blocks.4.blocks.1.pos_embed.pos"]

    model = build_model(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(v.numel() for k, v in source.items() if k.endswith((".init.u0", ".init.v0")))
    assert n_params == sum(v.numel() for v in source.values()) - n_buffers


def test_values_move_to_the_right_places(fixture_info: dict[str, Any]) -> None:
    """Distinct values per source tensor land where the mapping says (adapter columns swapped)."""
    shapes = fixture_info["full_size_state_dict_shapes"]["isles"]
    generator = torch.Generator().manual_seed(0)
    source = {k: torch.randn(s, generator=generator) for k, s in shapes.items()}
    _, ours = convert_state_dict(source, None, variant="swin")
    adapter = source["net.decoder.blocks.3.blocks.0.adapter.0.linear.weight"]  # level 0: 32 channels
    assert torch.equal(ours["fuse.0.weight"][:, :32, 0, 0, 0], adapter[:, 32:, 0])  # up first
    assert torch.equal(ours["fuse.0.weight"][:, 32:, 0, 0, 0], adapter[:, :32, 0])  # then the skip
    block = "net.decoder.blocks.0.blocks.0.blocks."
    mlp_out = source[block + "mlp.fn.1.block.3.linear.weight"]
    assert torch.equal(ours["decoder.3.0.mlp.net.3.weight"], mlp_out.reshape(*mlp_out.shape, 1, 1))
    assert torch.equal(ours["decoder.3.0.mixer.nmf.v0"], source[block + "nmf.fn.1.factorize.init.v0"])
    assert torch.equal(ours["decoder.3.0.mixer.nmf.u0"], source[block + "nmf.fn.1.factorize.init.u0"])
    encoder = "net.encoder.blocks.{}.blocks.1.blocks.nmf.fn."
    assert torch.equal(ours["encoder.2.0.mixer.nmf.u0"], source[encoder.format(2) + "1.factorize.init.u0"])
    assert torch.equal(ours["encoder.4.0.norm1.norm.bias"], source[encoder.format(4) + "0.norm.bias"])
    assert torch.equal(ours["down.3.conv.weight"], source["net.encoder.blocks.4.blocks.0.weight"])
    assert torch.equal(ours["head.bias"], source["net.heads.0.bias"])


def test_conversion_refuses_inconsistent_weights(fixture_info: dict[str, Any]) -> None:
    shapes = fixture_info["full_size_state_dict_shapes"]["brats"]
    source = {k: torch.zeros(s) for k, s in shapes.items()}
    with pytest.raises(InputError, match="--variant"):
        convert_state_dict(source, None)
    extra = dict(source, **{"net.decoder.blocks.0.blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="do not belong"):
        convert_state_dict(extra, None, variant="swin")
    missing = {k: v for k, v in source.items() if k != "net.heads.1.bias"}
    with pytest.raises(InputError, match="lacks net.heads.1.bias"):
        convert_state_dict(missing, None, variant="swin")
    bad = dict(source, **{"net.decoder.blocks.1.upsample.bias": torch.zeros(7)})
    with pytest.raises(InputError, match=r"upsample.bias has shape \[7\]"):
        convert_state_dict(bad, None, variant="swin")
    not_cube = {k: (torch.zeros(500, 1) if k.endswith("init.v0") else v) for k, v in source.items()}
    with pytest.raises(InputError, match="--window-size"):
        convert_state_dict(not_cube, None, variant="swin")
    cfg, _ = convert_state_dict(not_cube, None, variant="local", window_size=[10, 10, 5])
    assert cfg["window_size"] == [10, 10, 5] and cfg["name"] == "local_factorizer"


def test_hyper_parameters_are_read_without_their_classes(fixtures: Path) -> None:
    raw = read_official_checkpoint(fixtures / "brats_small.ckpt")
    network = raw["hyper_parameters"]["network"]
    assert issubclass(network[0], Placeholder)
    assert network[0].global_name == "factorizer.factorizer.SegmentationFactorizer"
    assert "factorizer" not in sys.modules
    optimizer = raw["hyper_parameters"]["optimizer"]
    assert isinstance(optimizer, Placeholder) and optimizer.global_name == "functools.partial"
    cfg, _ = convert_state_dict(raw["state_dict"], raw["hyper_parameters"], nmf_iters=3)
    assert cfg["name"] == "swin_factorizer" and cfg["window_size"] == 4 and cfg["nmf_iters"] == 3


# ------------------------------------------------------------------------------------ numerical match


@pytest.mark.parametrize("preset", ["brats", "isles"])
def test_imported_network_matches_the_authors_outputs(fixtures: Path, tmp_path: Path, preset: str) -> None:
    name = SMALL[preset]
    bundle = import_official_checkpoint(fixtures / f"{name}.ckpt", tmp_path / "model.pt")
    model = load_model(bundle).model.double().eval()
    reference = torch.load(fixtures / f"{name}_io.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        outputs = model.forward_all(reference["input"])
    assert len(outputs) == len(reference["outputs"]) == 3
    for level, (ours, theirs) in enumerate(zip(outputs, reference["outputs"])):
        assert ours.shape == theirs.shape
        error = float((ours - theirs).abs().max() / theirs.abs().max())
        assert error < 1e-6, f"{preset} output {level}: relative error {error:.3g}"


# ------------------------------------------------------------------------------------------ refusals


def test_refuses_corrupted_and_truncated_files(fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = (fixtures / "brats_small.ckpt").read_bytes()
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = {
        "truncated.ckpt": data[: len(data) // 2],
        "tail_cut.ckpt": data[:-100],
        "garbage.ckpt": os.urandom(4096),
        "empty.ckpt": b"",
        "text.ckpt": b"not a checkpoint\n",
    }
    flipped = bytearray(data)  # a byte of the pickle changed: the zip's CRC check catches it
    start = data.find(b"data.pkl") + 200
    flipped[start] ^= 0xFF
    cases["flipped.ckpt"] = bytes(flipped)
    for file_name, content in cases.items():
        (inputs / file_name).write_bytes(content)
    with zipfile.ZipFile(inputs / "other_zip.ckpt", "w") as archive:  # a zip, but not of torch.save
        archive.writestr("other_zip/notes.txt", "no pickle here")
    cases["other_zip.ckpt"] = b""
    out = tmp_path / "out"
    out.mkdir()
    for file_name in cases:
        line = _refused(capsys, ["import-checkpoint", str(inputs / file_name), "-o", str(out / "m.pt")], out, [])
        assert file_name in line


def test_refuses_foreign_architectures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    resnet = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": {"net.conv1.weight": torch.zeros(64, 3, 7, 7), "net.fc.bias": torch.zeros(10)},
                "epoch": 3}, resnet)
    line = _refused(capsys, ["import-checkpoint", str(resnet), "-o", str(out / "m.pt")], out, [])
    assert "SegmentationFactorizer" in line
    bare = tmp_path / "bare.pt"
    torch.save({"conv1.weight": torch.zeros(4, 4)}, bare)
    _refused(capsys, ["import-checkpoint", str(bare), "-o", str(out / "m.pt")], out, [])
    no_state = tmp_path / "no_state.ckpt"
    torch.save({"epoch": 1, "hyper_parameters": {"lr": 0.1}}, no_state)
    _refused(capsys, ["import-checkpoint", str(no_state), "-o", str(out / "m.pt")], out, [])
    listed = tmp_path / "list.ckpt"
    torch.save([torch.zeros(2)], listed)
    _refused(capsys, ["import-checkpoint", str(listed), "-o", str(out / "m.pt")], out, [])


def test_refuses_a_checkpoint_of_another_network_of_the_authors(
    fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = read_official_checkpoint(fixtures / "isles_small.ckpt")
    state = {k: v for k, v in raw["state_dict"].items() if not k.startswith("net.heads.")}
    state["net.heads.0.weight"] = torch.zeros(1, 8, 3, 3, 3)  # a 3x3 head: not this architecture
    state["net.heads.0.bias"] = torch.zeros(1)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": state, "epoch": 0}, path)
    out = tmp_path / "out"
    out.mkdir()
    line = _refused(capsys, ["import-checkpoint", str(path), "-o", str(out / "m.pt")], out, [])
    assert "net.heads.0.weight" in line


class _Payload:
    """Pickles as a call of ``func(*args)``: what unpickling would run."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, Any]:
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "pathlib.Path.touch": _Payload(pathlib.Path.touch, pathlib.Path(marker)),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("which", ["os.system", "builtins.exec", "builtins.eval", "pathlib.Path.touch",
                                   "subprocess.Popen"])
def test_refuses_code_in_the_pickle(fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture, which: str) -> None:
    marker = tmp_path / "pwned"
    raw = read_official_checkpoint(fixtures / "isles_small.ckpt")
    for place in ("hyper_parameters", "callbacks"):  # next to real weights, so only the payload is wrong
        path = tmp_path / f"evil_{place}.ckpt"
        checkpoint = {"epoch": 0, "state_dict": raw["state_dict"], "hyper_parameters": {}}
        checkpoint[place] = {"network": _payloads(marker)[which]}
        torch.save(checkpoint, path)
        assert not marker.exists()
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        line = _refused(capsys, ["import-checkpoint", str(path), "-o", str(out / "m.pt")], out, [])
        assert "refused" in line and path.name in line
        assert not marker.exists(), "unpickling ran the payload"
    if which == "os.system":
        assert "posix.system" in line or "os.system" in line


def test_refuses_globals_this_process_marked_safe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``add_safe_globals`` elsewhere in the process must not let a payload through (it would get the real one)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"net.stem.weight": torch.zeros(1)},
                "hyper_parameters": {"x": _Payload(os.system, f"touch {marker}")}}, path)
    out = tmp_path / "out"
    out.mkdir()
    with torch.serialization.safe_globals([os.system]):
        line = _refused(capsys, ["import-checkpoint", str(path), "-o", str(out / "m.pt")], out, [])
    assert "system" in line and not marker.exists()


def test_allowlisted_names_stay_inert(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A global under an allowed prefix becomes a placeholder: the real object (here a torch class) never runs."""
    marker = tmp_path / "pwned"

    class Sneaky:
        def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
            return torch.nn.modules.conv.Conv3d, (1, 1, 1)

    path = tmp_path / "sneaky.ckpt"
    torch.save({"state_dict": {"net.conv1.weight": torch.zeros(1)}, "hyper_parameters": {"x": Sneaky()}}, path)
    raw = read_official_checkpoint(path)
    made = raw["hyper_parameters"]["x"]
    assert not isinstance(made, torch.nn.Module) and made.args == (1, 1, 1)
    out = tmp_path / "out"
    out.mkdir()
    _refused(capsys, ["import-checkpoint", str(path), "-o", str(out / "m.pt")], out, [])
    assert not marker.exists()


def test_refuses_an_existing_output(fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"keep me")
    line = _refused(capsys, ["import-checkpoint", str(fixtures / "isles_small.ckpt"), "-o", str(target)],
                    tmp_path, [target])
    assert "already exists" in line and target.read_bytes() == b"keep me"
    missing_folder = tmp_path / "nowhere" / "model.pt"
    _refused(capsys, ["import-checkpoint", str(fixtures / "isles_small.ckpt"), "-o", str(missing_folder)],
             tmp_path, [target])
    line = _refused(capsys, ["import-checkpoint", str(fixtures / "isles_small.ckpt"), "-o", str(target),
                             "--labels", "msd_task01"], tmp_path, [target])
    assert "already exists" in line
    assert main(["import-checkpoint", str(fixtures / "isles_small.ckpt"), "-o", str(target), "--overwrite"]) == 0
    assert load_model(target).config["model"]["out_channels"] == 1


def test_variant_is_required_without_hyper_parameters(
    fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = read_official_checkpoint(fixtures / "isles_small.ckpt")
    path = tmp_path / "weights_only.ckpt"
    torch.save({"state_dict": raw["state_dict"]}, path)
    out = tmp_path / "out"
    out.mkdir()
    line = _refused(capsys, ["import-checkpoint", str(path), "-o", str(out / "m.pt")], out, [])
    assert "--variant" in line
    assert main(["import-checkpoint", str(path), "-o", str(out / "m.pt"), "--variant", "swin", "--nmf-iters", "3"]) == 0
    model_cfg = load_model(out / "m.pt").config["model"]
    assert model_cfg["name"] == "swin_factorizer" and model_cfg["nmf_iters"] == 3 and model_cfg["window_size"] == 4


def test_refuses_options_that_do_not_fit(fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = str(fixtures / "brats_small.ckpt")
    for extra, fragment in ((["--labels", "isles22"], "output channels"), (["--channels", "a", "b"], "channel name"),
                            (["--labels", "nonsense"], "unknown label convention"),
                            (["--window-size", "8"], "v0 has 64 rows")):
        line = _refused(capsys, ["import-checkpoint", src, "-o", str(tmp_path / "m.pt"), *extra], tmp_path, [])
        assert fragment in line, line


# --------------------------------------------------------------------------------------------- bundle


def test_imported_bundle_loads_and_predicts(fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "brats.pt"
    assert main(["import-checkpoint", str(fixtures / "brats_small.ckpt"), "-o", str(target)]) == 0
    assert str(target) in capsys.readouterr().out
    loaded = load_model(target)
    config = loaded.config
    assert config["channels"] == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert config["labels"]["convention"] == "msd_task01" and loaded.labels.num_outputs == 3
    assert config["transforms"]["roi_size"] == [64, 64, 64] and config["transforms"]["spacing"] == [1.0, 1.0, 1.0]
    assert config["model"]["stem"] == "conv" and config["model"]["init"] == "fixed_uv"
    assert set(config["inference"]) == {"overlap", "blend", "sw_batch_size", "tta", "nmf_iters"}
    with torch.no_grad():
        out = loaded.model(torch.rand(1, 4, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32) and torch.isfinite(out).all()

    isles = tmp_path / "isles.pt"
    assert main(["import-checkpoint", str(fixtures / "isles_small.ckpt"), "-o", str(isles), "--crop", "96"]) == 0
    loaded = load_model(isles)
    assert loaded.channels == ["DWI", "ADC"] and loaded.labels.num_outputs == 1
    assert loaded.labels.mode == "regions" and loaded.config["transforms"]["spacing"] is None
    assert loaded.config["transforms"]["roi_size"] == [96, 96, 96]
    with torch.no_grad():
        assert loaded.model(torch.rand(1, 2, 16, 16, 16)).shape == (1, 1, 16, 16, 16)


def test_imported_model_takes_fewer_nmf_iterations_and_explains(fixtures: Path, tmp_path: Path) -> None:
    """The test-time speed-up and explain work on an imported model (the paper's fixed_uv init)."""
    from factorseg.explain import explain
    from factorseg.models.layers.nmf import set_nmf_iters

    target = tmp_path / "isles.pt"
    assert main(["import-checkpoint", str(fixtures / "isles_small.ckpt"), "-o", str(target)]) == 0
    model = load_model(target).model
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        full = model(x)
        assert set_nmf_iters(model, 1) == 9
        fewer = model(x)
    assert torch.isfinite(fewer).all() and not torch.allclose(full, fewer)
    output, found = explain(model, x, blocks=["encoder.0.0", "decoder.3.0"])
    torch.testing.assert_close(output, fewer, rtol=0, atol=0)  # explaining does not change the output
    assert set(found) == {"encoder.0.0", "decoder.3.0"}
    # 8 channels in heads of 4: two component maps
    assert found["encoder.0.0"].maps.shape[:2] == (1, 2) and torch.isfinite(found["encoder.0.0"].maps).all()
