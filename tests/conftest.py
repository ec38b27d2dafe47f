from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AITS = SHARED_DATA / "aitslab-bioimaging1"


@pytest.fixture(scope="session")
def aits() -> Path:
    if not AITS.is_dir():
        pytest.skip(f"shared data not found at {AITS}")
    return AITS
