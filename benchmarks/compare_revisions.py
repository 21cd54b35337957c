"""Before/after timing of two git revisions, side by side: the mixer (64^3, 32 channels) and the 64^3 Swin
Factorizer (BraTS preset) and SegResNet forward and training step.

Run (on a quiet core; the revisions are checked out as temporary worktrees and removed afterwards):
    .venv/bin/python benchmarks/compare_revisions.py --before 90a6242 --after HEAD --rounds 3 --core 1

The two revisions alternate (before, after, before, after, ...), every measurement a fresh process pinned
to one core with one torch thread and the allocator tunables, so that both see the same machine; the table
gives medians over all rounds and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456"
RUNS = {
    "mixer": ["-m", "benchmarks.mixer", "--size", "64", "--threads", "1", "--repeats", "5"],
    "models": ["-m", "benchmarks.models", "--models", "swin_factorizer", "segresnet", "--sizes", "64", "--threads", "1",
               "--repeats", "3", "--train-repeats", "3", "--no-memory"],
}
ROWS = {  # row -> (run, section path in its JSON)
    "mixer train step (sub-blocks)": ("mixer", ("train", "+ sub-blocks (ours)")),
    "mixer forward (no_grad)": ("mixer", ("inference", "ours, no_grad")),
    "swin_factorizer 64^3 forward": ("models", ("results", "swin_factorizer", "64", "forward")),
    "swin_factorizer 64^3 train step": ("models", ("results", "swin_factorizer", "64", "train")),
    "segresnet 64^3 forward": ("models", ("results", "segresnet", "64", "forward")),
    "segresnet 64^3 train step": ("models", ("results", "segresnet", "64", "train")),
}


def times(folder: Path, path: tuple[str, ...]) -> list[float]:
    node = json.loads(next(folder.glob("*.json")).read_text())
    for key in path:
        node = node[key]
    return node["times"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision")
    parser.add_argument("--after", default="HEAD", help="git revision (default HEAD)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin every run to")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="factorseg_ab_"))
    trees = {"before": work / "before", "after": work / "after"}
    for name, rev in (("before", args.before), ("after", args.after)):
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(trees[name]), rev], cwd=ROOT, check=True)
    loads = []
    try:
        for r in range(args.rounds):
            for name, tree in trees.items():
                env = dict(os.environ, OMP_NUM_THREADS="1", GLIBC_TUNABLES=TUNABLES, PYTHONPATH=str(tree / "src"))
                loads.append(os.getloadavg()[0])
                for run, cmd in RUNS.items():
                    subprocess.run(["taskset", "-c", str(args.core), sys.executable, *cmd, "--out",
                                    str(work / "out" / f"{name}_{r}" / run)], cwd=tree, env=env, check=True,
                                   capture_output=True)
                print(f"{name} round {r + 1} done", flush=True)
        medians = {name: {row: statistics.median(t for r in range(args.rounds)
                                                 for t in times(work / "out" / f"{name}_{r}" / run, path))
                          for row, (run, path) in ROWS.items()} for name in trees}
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    print(f"\nload average at the starts of the runs: {min(loads):.2f}-{max(loads):.2f}\n")
    print(f"| measurement (median, 1 thread) | before ({args.before}) | after ({args.after}) | after / before |")
    print("|---|---|---|---|")
    for row in ROWS:
        b, a = medians["before"][row], medians["after"][row]
        print(f"| {row} | {b * 1000:.1f} ms | {a * 1000:.1f} ms | {a / b:.3f} |")


if __name__ == "__main__":
    main()
