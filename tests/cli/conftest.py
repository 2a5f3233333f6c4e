"""Fixtures of the CLI tests that compare two ways of running a model (backends, compiling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import SHARED

PHOTO = SHARED / "data" / "eval" / "Set14" / "baboon.png"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 48 x 40 crop of a real photo as a 16-bit TIFF, so outputs are 16-bit and fine differences show."""
    crop = np.asarray(Image.open(PHOTO).convert("RGB"))[100:140, 200:248].astype(np.uint16) * 257
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, crop)
    return path
