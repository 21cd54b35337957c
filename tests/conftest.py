"""Shared test settings: few threads (CI has 2 cores) and the real-data location."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it are skipped where it is absent (as on a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA
