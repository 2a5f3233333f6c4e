"""LPIPS and VGG backbones downloaded on first use into flowsr's cache, through the checked downloader, from a
real HTTP server on 127.0.0.1 (the mirror of the model_base_url setting); offline, one line saying what to do.

The served files are torchvision-style full checkpoints (the shared ``features.*`` weights plus a small
``classifier.*``) whose sha256 and size the tests pin in place of torchvision's published ones: the test
never has the 233 MB / 528 MB originals, and never reaches the internet."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from flowsr_cli.errors import FlowsrError
from flowsr_cli.eval import backbones
from flowsr_cli.eval.backbones import ALEXNET_FILE, VGG16_FILE, load_lpips_alex
from flowsr_cli.eval.metrics import LPIPS
from flowsr_cli.hub.download import part_path
from tests.conftest import SHARED, CliInvoker
from tests.eval.test_backbones import WEIGHTS, tid2013_pairs
from tests.http_server import FileServer, Route

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
VGG16_CHECKPOINT = "vgg16-397923af.pth"
BIRD = SHARED / "data/eval/Set5/bird.png"


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No torchvision checkpoint in torch's hub cache, so only flowsr's own sources count."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """The local HTTP server, set as the mirror (model_base_url) of every flowsr download."""
    with FileServer() as running:
        monkeypatch.setenv("FLOWSR_MODEL_BASE_URL", running.url("/mirror"))
        yield running


def full_checkpoint(features_file: str, folder: Path) -> bytes:
    """A torchvision-style checkpoint: the shared ``features.*`` tensors and a (small) classifier."""
    state = torch.load(WEIGHTS / features_file, map_location="cpu", weights_only=True)
    state["classifier.6.weight"] = torch.ones(3, 5)
    state["classifier.6.bias"] = torch.zeros(3)
    torch.save(state, folder / "checkpoint.pth")
    return (folder / "checkpoint.pth").read_bytes()


@pytest.fixture(scope="module")
def alexnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return full_checkpoint(ALEXNET_FILE, tmp_path_factory.mktemp("alexnet"))


def serve(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, name: str, body: bytes, pin: backbones.Pin | None = None
) -> str:
    """Serve ``body`` as torchvision's checkpoint ``name`` on the mirror, pinned to its own sha256 and size
    (or to ``pin``); returns its path on the server."""
    monkeypatch.setitem(backbones.PINNED, name, pin or backbones.Pin(hashlib.sha256(body).hexdigest(), len(body)))
    server.add(f"/mirror/{name}", Route(body))
    return f"/mirror/{name}"


def cached(name: str) -> Path:
    """Where flowsr keeps a downloaded backbone checkpoint (the cache_dir fixture's folder)."""
    return Path(os.environ["FLOWSR_CACHE_DIR"]) / "backbones" / name


def one_line_error(loader: Callable[[], object]) -> str:
    """The message of the FlowsrError ``loader()`` raises; it must be one line."""
    with pytest.raises(FlowsrError) as caught:
        loader()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_pins_are_torchvisions_published_checkpoints() -> None:
    """The pinned URLs are torchvision's own, each sha256 starts with the 8 hex digits torchvision puts in the
    file name (its convention, checked by torch.hub on download), and each size rounds to the MB torchvision
    records for the file."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    for weights, name in (
        (AlexNet_Weights.IMAGENET1K_V1, ALEXNET_CHECKPOINT),
        (VGG16_Weights.IMAGENET1K_V1, VGG16_CHECKPOINT),
    ):
        assert backbones.TORCHVISION_URL + name == weights.url
        pin = backbones.PINNED[name]
        assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256)
        assert pin.sha256.startswith(re.search(r"-([0-9a-f]{8})\.pth$", name)[1])
        assert round(pin.size / 2**20, 3) == weights.meta["_file_size"]


def test_lpips_downloads_alexnet_once_into_the_cache_and_reproduces_tid2013(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, alexnet_checkpoint: bytes
) -> None:
    path = serve(server, monkeypatch, ALEXNET_CHECKPOINT, alexnet_checkpoint)
    references, distorted, expected = tid2013_pairs()
    assert LPIPS("cpu")(distorted, references).tolist() == pytest.approx(expected, abs=1e-3)
    assert cached(ALEXNET_CHECKPOINT).read_bytes() == alexnet_checkpoint
    assert len(server.requests_for(path)) == 1
    LPIPS("cpu")  # the cached file is checked, not downloaded again
    assert len(server.requests_for(path)) == 1


def test_eval_downloads_the_backbone_on_first_use(
    run_cli: CliInvoker, server: FileServer, monkeypatch: pytest.MonkeyPatch, alexnet_checkpoint: bytes, tmp_path: Path
) -> None:
    path = serve(server, monkeypatch, ALEXNET_CHECKPOINT, alexnet_checkpoint)
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "bird.png").symlink_to(BIRD)
    out = tmp_path / "r.json"
    result = run_cli("eval", str(tmp_path / "set"), "--scales", "2", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "downloading torchvision's ImageNet AlexNet" in result.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert 0 < row["lpips"] < 1
    assert len(server.requests_for(path)) == 1


def test_vgg16_perceptual_loss_downloads_its_backbone(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from flowsr_cli.train.perceptual import VGGPerceptualLoss

    serve(server, monkeypatch, VGG16_CHECKPOINT, full_checkpoint(VGG16_FILE, tmp_path))
    loss = VGGPerceptualLoss(torch.device("cpu"), "deep")
    assert loss.network == "vgg16 conv5_3"
    state = torch.load(WEIGHTS / VGG16_FILE, map_location="cpu", weights_only=True)
    torch.testing.assert_close(loss.features[28].weight, state["features.28.weight"], atol=0, rtol=0)
    assert cached(VGG16_CHECKPOINT).is_file()


def test_offline_eval_names_the_url_and_backbone_dir_and_requests_nothing(
    run_cli: CliInvoker, server: FileServer, monkeypatch: pytest.MonkeyPatch, alexnet_checkpoint: bytes
) -> None:
    path = serve(server, monkeypatch, ALEXNET_CHECKPOINT, alexnet_checkpoint)
    result = run_cli("eval", str(BIRD.parent), "--scales", "2", "--offline")
    assert result.exit_code == 1
    message = result.stderr.replace("\n", " ")
    assert message.count("error:") == 1 and "unexpected" not in message
    assert server.url(path) in message and "flowsr is offline (--offline)" in message
    assert "flowsr config set backbone_dir FOLDER" in message and ALEXNET_FILE in message
    assert "--no-lpips" in message
    assert server.requests_for(path) == []


def test_offline_setting_downloads_nothing(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, alexnet_checkpoint: bytes
) -> None:
    path = serve(server, monkeypatch, ALEXNET_CHECKPOINT, alexnet_checkpoint)
    monkeypatch.setenv("FLOWSR_OFFLINE", "1")
    message = one_line_error(lambda: load_lpips_alex("cpu"))
    assert "env FLOWSR_OFFLINE" in message and str(cached(ALEXNET_CHECKPOINT)) in message
    assert server.requests_for(path) == [] and not cached(ALEXNET_CHECKPOINT).exists()


def test_wrong_bytes_are_refused_and_deleted(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, alexnet_checkpoint: bytes
) -> None:
    serve(server, monkeypatch, ALEXNET_CHECKPOINT, alexnet_checkpoint, backbones.Pin("0" * 64, len(alexnet_checkpoint)))
    message = one_line_error(lambda: load_lpips_alex("cpu"))
    assert "checksum mismatch" in message and "backbone_dir" in message
    assert not cached(ALEXNET_CHECKPOINT).exists() and not part_path(cached(ALEXNET_CHECKPOINT)).exists()


def test_server_error_names_the_url_and_what_to_do(server: FileServer) -> None:
    message = one_line_error(lambda: load_lpips_alex("cpu"))
    assert server.url(f"/mirror/{ALEXNET_CHECKPOINT}") in message and "HTTP 404" in message
    assert "flowsr config set backbone_dir FOLDER" in message


def test_a_changed_cached_backbone_is_refused(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, alexnet_checkpoint: bytes
) -> None:
    path = serve(server, monkeypatch, ALEXNET_CHECKPOINT, alexnet_checkpoint)
    load_lpips_alex("cpu")
    with cached(ALEXNET_CHECKPOINT).open("r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"!")
    message = one_line_error(lambda: load_lpips_alex("cpu"))
    assert str(cached(ALEXNET_CHECKPOINT)) in message and "sha256" in message and "delete" in message
    assert len(server.requests_for(path)) == 1


def test_backbone_dir_wins_and_nothing_is_requested(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, alexnet_checkpoint: bytes
) -> None:
    path = serve(server, monkeypatch, ALEXNET_CHECKPOINT, alexnet_checkpoint)
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(WEIGHTS))
    load_lpips_alex("cpu")
    assert server.requests_for(path) == []
