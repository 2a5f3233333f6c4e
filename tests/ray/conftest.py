"""One local Ray cluster (2 CPUs) for every test of `--backend ray`, and a folder of tiny real images: 8-bit and
16-bit PNGs (one with alpha), a JPEG with EXIF and an ICC profile, and a truncated PNG."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import pytest

from tests.image_factory import exif_bytes, gradient8, gradient16, save_pillow, smooth_rgb, srgb_icc_profile

HEIGHT, WIDTH = 24, 32


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[str]:
    """A Ray cluster started once for the tests in this folder, and shut down after them (so that it takes no CPU
    from the rest of the suite): the CLI run in this process uses it as it is, a CLI run in a subprocess joins it
    with ``--address`` (the address yielded)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """``tmp_path/in`` with four good images and one corrupt one."""
    folder = tmp_path / "in"
    folder.mkdir()
    save_pillow(folder / "rgb8.png", gradient8(3, HEIGHT, WIDTH), "PNG")
    (folder / "rgba16.png").write_bytes(imagecodecs.png_encode(gradient16(4, HEIGHT, WIDTH)))
    save_pillow(folder / "grey8.png", gradient8(1, WIDTH, HEIGHT), "PNG")
    save_pillow(
        folder / "photo.jpg", smooth_rgb(HEIGHT, WIDTH), "JPEG", exif=exif_bytes(), icc_profile=srgb_icc_profile()
    )
    (folder / "broken.png").write_bytes(imagecodecs.png_encode(gradient16(3))[:400])  # its header is whole
    return folder
