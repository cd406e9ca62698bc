"""Where the tests find the repository and the real data sets, wherever the test sits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The repository's root (pyproject.toml, deploy/, examples/).
ROOT = Path(__file__).resolve().parents[2]

#: The real data sets: ``$STAMEN_DATA_DIR``, else ``../shared/data`` beside the repository
#: (tests that read them skip when absent).
REAL_DATA = Path(os.environ.get("STAMEN_DATA_DIR") or ROOT.parent / "shared" / "data")


def real_data(folder: str) -> Path:
    """The real data set ``folder`` under :data:`REAL_DATA`; the test is skipped when it
    is absent."""
    path = REAL_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data not present: {path}")
    return path
