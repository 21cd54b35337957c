"""Shared test settings: one torch thread (2 threads on 2 shared cores can be 10x slower) and the real data."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it are skipped where it is absent (as on a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic 16^3 BraTS 2021 cases (read only: tests copy what they change)."""
    from factorseg.data.synthetic import write_brats_dataset

    root = tmp_path_factory.mktemp("tiny_brats") / "data"
    write_brats_dataset(root, 4, seed=3, shape=(16, 16, 16))
    return root
