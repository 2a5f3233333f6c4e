"""Fixtures the `flowsr train` tests share: a folder of three real training photos, a recipe file holding the
test module's ``RECIPE``, and a validation folder of one crop (a module may define its own of any of them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import SHARED


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three photos of the shared training set, copied into ``tmp_path/photos``."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted((SHARED / "data/train/bsds500_train").iterdir())[:3]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture
def recipe(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """``tmp_path/recipe.toml`` holding the requesting test module's ``RECIPE``."""
    (tmp_path / "recipe.toml").write_text(request.module.RECIPE)
    return tmp_path / "recipe.toml"


@pytest.fixture
def val(tmp_path: Path, photos: Path) -> Path:
    """A validation folder of one 64 x 48 crop of the first photo."""
    folder = tmp_path / "val"
    folder.mkdir()
    Image.open(sorted(photos.iterdir())[0]).crop((0, 0, 64, 48)).save(folder / "a.png")
    return folder
