"""`flowsr rescale down` and `rescale up` with `--backend ray` write what the local path writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CliInvoker

pytestmark = pytest.mark.usefixtures("ray_cluster", "one_thread")  # one torch thread, as in a 1-CPU worker


def _outputs(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_rescale_down_and_up_on_ray_match_the_local_path(run_cli: CliInvoker, images: Path) -> None:
    (images / "broken.png").unlink()
    root = images.parent
    for backend in ("torch", "ray"):
        down = run_cli("rescale", "down", str(images), "-s", "2", "-o", str(root / f"lr-{backend}"),
                       "--backend", backend)  # fmt: skip
        assert down.exit_code == 0, down.output
        up = run_cli("rescale", "up", str(root / f"lr-{backend}"), "-o", str(root / f"up-{backend}"),
                     "--backend", backend)  # fmt: skip
        assert up.exit_code == 0, up.output
        assert "4 restored, 0 skipped, 0 failed" in up.stderr
    assert _outputs(root / "lr-ray") == _outputs(root / "lr-torch")
    assert _outputs(root / "up-ray") == _outputs(root / "up-torch")
