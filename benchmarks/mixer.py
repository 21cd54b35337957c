"""Micro-benchmark: our NMF mixer against the plain reference formulation, one optimisation at a time.

The mixer is the BraTS preset's full-resolution one (32 channels, head_dim 8, 8^3 windows at shifts 0
and 4, rank 1, 5 HALS iterations, the paper's fixed_uv init) on a ``(1, 32, S, S, S)`` input; the
same mixer with the fixed_u init (factorseg's earlier default) is timed beside it. Rows, each timed interleaved with
the others in one process (minimum and median of ``--repeats``):

* training (forward + backward, gradients for the input and all parameters):
  ``reference`` (roll + reshape per shift, unrolled iterations), ``gather + channels-last``
  (no roll copies, one window buffer, folded out-projection, plain iterations: ``path="plain"``),
  ``+ fused rank-1 HALS`` (the window path: ``path="windows"``), ``+ sub-blocks`` (ours, the
  default ``path="subblocks"``), ``+ one-step gradient`` (``backprop_iters=1``);
* inference: ours with autograd recording, under ``torch.no_grad``, under ``torch.inference_mode``,
  with bf16 autocast, and (``--compile``) through ``torch.compile``; the reference under ``no_grad``.

Before timing, outputs and gradients of ours are checked against the reference
(``benchmarks/reference.py``; float32; the largest absolute difference relative to the largest
magnitude is reported and must be <= 1e-5).

    python -m benchmarks.mixer --size 64 --repeats 7
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks.common import common_arguments, fmt_seconds, interleaved, markdown_table, save_json, save_plot, setup
from benchmarks.reference import reference_mixer
from factorseg.models.layers.mixer import MixerPath, NMFMixer
from factorseg.models.layers.nmf import Init, NMFConfig


def make_mixer(
    channels: int, path: MixerPath = "subblocks", backprop_iters: int | None = None, init: Init = "fixed_uv"
) -> NMFMixer:
    torch.manual_seed(0)
    nmf = NMFConfig(rank=1, num_iters=5, solver="hals", init=init, backprop_iters=backprop_iters)
    return NMFMixer(channels, 3, head_dim=8, window_size=8, shifts=[0, 4], nmf=nmf, path=path)


def training_step(fn: Callable[[Tensor], Tensor], x: Tensor, params: list[Tensor]) -> Callable[[], object]:
    weight = torch.randn_like(x)

    def run() -> object:
        xi = x.detach().requires_grad_()
        return torch.autograd.grad((fn(xi) * weight).sum(), [xi, *params])

    return run


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check_equal(mixer: NMFMixer, x: Tensor) -> dict[str, float]:
    """Largest |ours - reference| / max|reference| for the output and every gradient."""
    params = list(mixer.parameters())
    weight = torch.randn_like(x)
    results = []
    for fn in (mixer, lambda t: reference_mixer(mixer, t)):
        xi = x.detach().requires_grad_()
        out = fn(xi)
        results.append((out.detach(), torch.autograd.grad((out * weight).sum(), [xi, *params])))
    (out, grads), (ref, ref_grads) = results
    errors = {"output": relative_error(out, ref)}
    names = ["input"] + [n for n, _ in mixer.named_parameters()]
    errors.update({f"grad {n}": relative_error(g, r) for n, g, r in zip(names, grads, ref_grads)})
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--size", type=int, default=64, help="edge of the cubic input (default 64)")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(mixer) (slow to compile)")
    args = parser.parse_args()
    env = setup(args)
    device = torch.device(args.device)
    x = torch.randn(1, args.channels, args.size, args.size, args.size, device=device)
    ours, plain, onestep, windowed = (make_mixer(args.channels, path, k).to(device) for path, k in
                                      (("subblocks", None), ("plain", None), ("subblocks", 1), ("windows", None)))
    fixed_u = make_mixer(args.channels, init="fixed_u").to(device)
    crop = x[..., :16, :16, :16]
    errors = check_equal(ours, crop)
    for label, mixer in (("window path", windowed), ("plain iterations", plain), ("fixed_u init", fixed_u)):
        errors.update({f"{label}, {k}": v for k, v in check_equal(mixer, crop).items()})
    worst = max(errors.values())
    print(f"ours vs reference (16^3 crop): worst relative difference {worst:.2e}")
    if worst > 1e-5:
        raise SystemExit(f"ours differs from the reference by {worst:.2e} > 1e-5: {errors}")

    params = list(ours.parameters())
    train = interleaved({
        "reference": training_step(lambda t: reference_mixer(ours, t), x, params),
        "gather + channels-last": training_step(plain, x, list(plain.parameters())),
        "+ fused rank-1 HALS": training_step(windowed, x, list(windowed.parameters())),
        "+ sub-blocks (ours)": training_step(ours, x, params),
        "+ one-step gradient": training_step(onestep, x, list(onestep.parameters())),
        "sub-blocks, fixed_u init": training_step(fixed_u, x, list(fixed_u.parameters())),
    }, args.repeats, device)

    def under(ctx: Callable[[], contextlib.AbstractContextManager], fn: Callable[[Tensor], Tensor]) -> Callable[[], object]:
        def run() -> object:
            with ctx():
                return fn(x)
        return run

    bf16 = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    infer_runs = {
        "reference, no_grad": under(torch.no_grad, lambda t: reference_mixer(ours, t)),
        "ours, autograd recording": under(torch.enable_grad, ours),
        "window path (fused HALS), inference_mode": under(torch.inference_mode, windowed),
        "ours, no_grad": under(torch.no_grad, ours),
        "ours, inference_mode": under(torch.inference_mode, ours),
        "ours with the fixed_u init, inference_mode": under(torch.inference_mode, fixed_u),
        "ours, inference_mode + bf16 autocast": under(lambda: _both(torch.inference_mode(), bf16()), ours),
    }
    if args.compile:
        compiled = torch.compile(ours)
        infer_runs["ours, torch.compile, inference_mode"] = under(torch.inference_mode, compiled)
    infer = interleaved(infer_runs, args.repeats, device)

    ref_train, ref_infer = train["reference"].min, infer["reference, no_grad"].min
    rows = [("train (fwd+bwd)", k, fmt_seconds(t.min), fmt_seconds(t.median), f"{ref_train / t.min:.2f}x")
            for k, t in train.items()]
    rows += [("inference", k, fmt_seconds(t.min), fmt_seconds(t.median), f"{ref_infer / t.min:.2f}x")
             for k, t in infer.items()]
    table = markdown_table(["pass", "implementation", "min s", "median s", "speed-up vs reference (min)"], rows)
    print(f"\nNMF mixer, input (1, {args.channels}, {args.size}^3), {args.threads} threads\n")
    print(table)
    stem = args.out / f"mixer_{args.size}"
    save_json(stem.with_suffix(".json"), {"environment": env, "max_relative_difference": errors,
                                          "train": train, "inference": infer, "table": table})

    def draw(fig) -> None:
        ax = fig.subplots()
        labels = [f"train: {k}" for k in train] + [f"infer: {k}" for k in infer]
        values = [t.min for t in train.values()] + [t.min for t in infer.values()]
        ax.barh(labels[::-1], values[::-1], color=["tab:blue"] * len(infer) + ["tab:orange"] * len(train))
        ax.set_xlabel("seconds (minimum)")
        ax.set_title(f"NMF mixer at {args.size}^3, {args.threads} threads")

    save_plot(stem.with_suffix(".png"), draw, size=(9, 4.5))


@contextlib.contextmanager
def _both(a: contextlib.AbstractContextManager, b: contextlib.AbstractContextManager):
    with a, b:
        yield


if __name__ == "__main__":
    main()
