"""Same-seed reproducibility of `factorseg train`: the recipe of tests/test_resume.py, run N times uninterrupted and
K times killed (SIGKILL) at random points of epoch 2 then resumed; prints per run how many of the model's tensors
differ from the first uninterrupted run's (0: bit for bit the same).

Run from the repository root: python benchmarks/results/session31/same_seed_runs.py WORKDIR N K"""
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from factorseg.data.synthetic import write_brats_dataset  # noqa: E402
from factorseg.io import load_checkpoint  # noqa: E402
from tests.test_resume import ENV, _run, _train_argv  # noqa: E402

root, runs, kills = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
shutil.rmtree(root, ignore_errors=True)
data = root / "data"
write_brats_dataset(data, 4, seed=3, shape=(32, 32, 32))


def differ(out: Path, ref: dict) -> int:
    state = load_checkpoint(out / "model_last.pt")["state_dict"]
    return sum(not torch.equal(ref[k], state[k]) for k in ref)


_run(_train_argv(data, root / "run0"))
ref = load_checkpoint(root / "run0" / "model_last.pt")["state_dict"]
for i in range(1, runs):
    _run(_train_argv(data, root / f"run{i}"))
    print(f"uninterrupted run {i}: {differ(root / f'run{i}', ref)} tensors differ", flush=True)
rng = random.Random(2)
for i in range(kills):
    out, delay = root / f"killed{i}", rng.uniform(0.05, 0.5)
    checkpoint = out / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(_train_argv(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    seen = []
    while process.poll() is None:
        try:
            stamp = (checkpoint.stat().st_ino, checkpoint.stat().st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp is not None and (not seen or seen[-1] != stamp):
            seen.append(stamp)
            if len(seen) == 2:  # epoch 1's checkpoint: kill a little into epoch 2
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    process.wait()
    epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    _run([sys.executable, "-m", "factorseg.cli", "train", "-d", str(data), "-o", str(out), "--resume", "--no-progress"])
    print(f"killed {delay:.2f} s after epoch 1's checkpoint (checkpoint epoch {epoch}), resumed: "
          f"{differ(out, ref)} tensors differ", flush=True)
