"""ImageNet backbones from local files: LPIPS-alex against published TID2013 values, and every failure path
(downloads: test_backbone_download.py)."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr_cli.errors import FlowsrError
from flowsr_cli.eval.backbones import ALEXNET_FILE, VGG16_FILE, load_lpips_alex, load_vgg16_features
from flowsr_cli.eval.metrics import LPIPS
from tests.conftest import SHARED, CliInvoker

WEIGHTS = SHARED / "weights"
TID2013 = SHARED / "data/calib/tid2013"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection (e.g. a weights download) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch home (so an empty hub cache) private to the test."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def shared_weights(monkeypatch: pytest.MonkeyPatch, torch_home: Path) -> Path:
    """backbone_dir pointing at the shared weights folder."""
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(WEIGHTS))
    return WEIGHTS


def load_image(path: Path) -> torch.Tensor:
    """An image file as float32 (1, 3, H, W) in [0, 1]."""
    with Image.open(path) as image:
        pixels = np.array(image.convert("RGB"))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


def tid2013_pairs() -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """All TID2013 calibration pairs as batches (reference, distorted) and their published LPIPS-alex values."""
    expected = json.loads((TID2013 / "expected.json").read_text())["lpips_alex_v0.1"]
    names = sorted(expected)
    references = torch.cat([load_image(TID2013 / "ref_dir" / name) for name in names])
    distorted = torch.cat([load_image(TID2013 / "dist_dir" / name) for name in names])
    return references, distorted, [expected[name] for name in names]


def load_error(loader: Callable[[], object]) -> str:
    """The message of the FlowsrError that ``loader()`` raises; it must be a single line."""
    with pytest.raises(FlowsrError) as caught:
        loader()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_lpips_alex_reproduces_published_tid2013_values(shared_weights: Path) -> None:
    references, distorted, expected = tid2013_pairs()
    assert len(expected) == 5
    distances = LPIPS("cpu")(distorted, references)
    assert distances.shape == (5,)
    assert distances.tolist() == pytest.approx(expected, abs=1e-3)


def test_lpips_alex_is_symmetric_frozen_and_clamps(shared_weights: Path) -> None:
    references, distorted, _ = tid2013_pairs()
    metric = LPIPS("cpu")
    assert not metric.model.training
    assert not any(parameter.requires_grad for parameter in metric.model.parameters())
    reference, damaged = references[:1, :, :128, :128], distorted[:1, :, :128, :128]
    torch.testing.assert_close(metric(damaged, reference), metric(reference, damaged), atol=1e-6, rtol=0)
    overshoot = damaged.clone()
    overshoot[..., :50, :50] = 2.0
    overshoot[..., 60:70, 60:70] = float("nan")
    cleaned = overshoot.nan_to_num(nan=0.0).clamp(0, 1)
    torch.testing.assert_close(metric(overshoot, reference), metric(cleaned, reference))


def test_lpips_alex_holds_the_file_weights(shared_weights: Path) -> None:
    model = load_lpips_alex("cpu")
    state = torch.load(WEIGHTS / ALEXNET_FILE, map_location="cpu", weights_only=True)
    net_state = model.net.state_dict()
    assert len(net_state) == len(state) == 10
    for name, tensor in net_state.items():
        torch.testing.assert_close(tensor, state["features." + name.split(".", 1)[1]], atol=0, rtol=0)


def test_vgg16_features_load_and_run(shared_weights: Path) -> None:
    features = load_vgg16_features("cpu")
    assert not features.training
    assert not any(parameter.requires_grad for parameter in features.parameters())
    state = torch.load(WEIGHTS / VGG16_FILE, map_location="cpu", weights_only=True)
    assert set(features.state_dict()) == {key.removeprefix("features.") for key in state}
    for key, tensor in state.items():
        torch.testing.assert_close(features.state_dict()[key.removeprefix("features.")], tensor, atol=0, rtol=0)
    output = features(torch.rand(2, 3, 64, 64))
    assert output.shape == (2, 512, 2, 2)
    assert torch.isfinite(output).all()


def test_torch_hub_cache_is_used_without_backbone_dir(torch_home: Path) -> None:
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = torch.load(WEIGHTS / ALEXNET_FILE, map_location="cpu", weights_only=True)
    # torchvision's full checkpoint also holds the classifier, which must be ignored.
    state["classifier.1.weight"] = torch.zeros(4096, 9216)
    torch.save(state, checkpoints / "alexnet-owt-7be5be79.pth")
    references, distorted, expected = tid2013_pairs()
    assert LPIPS("cpu")(distorted[:1], references[:1]).item() == pytest.approx(expected[0], abs=1e-3)


def test_offline_without_a_source_says_what_to_do_and_downloads_nothing(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_OFFLINE", "1")
    for loader, file_name, url in (
        (lambda: load_lpips_alex("cpu"), ALEXNET_FILE, "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
        (load_vgg16_features, VGG16_FILE, "https://download.pytorch.org/models/vgg16-397923af.pth"),
    ):
        message = load_error(loader)
        assert file_name in message and url in message and "offline (env FLOWSR_OFFLINE)" in message
        assert "flowsr config set backbone_dir FOLDER" in message
        assert "FLOWSR_BACKBONE_DIR" in message
    assert list(torch_home.rglob("*")) == []


def test_missing_backbone_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_home: Path) -> None:
    folder = tmp_path / "no_such_folder"
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(folder))
    message = load_error(lambda: load_lpips_alex("cpu"))
    assert str(folder / ALEXNET_FILE) in message
    assert "env FLOWSR_BACKBONE_DIR" in message


def test_missing_file_names_the_path_and_the_config_file(
    tmp_path: Path, run_cli: CliInvoker, isolated_settings: Path, torch_home: Path
) -> None:
    folder = tmp_path / "backbones"
    folder.mkdir()
    shutil.copy(WEIGHTS / ALEXNET_FILE, folder / ALEXNET_FILE)
    assert run_cli("config", "set", "backbone_dir", str(folder)).exit_code == 0
    message = load_error(load_vgg16_features)
    assert str(folder / VGG16_FILE) in message
    assert str(isolated_settings) in message
    assert load_lpips_alex("cpu") is not None


def test_truncated_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_home: Path) -> None:
    data = (WEIGHTS / ALEXNET_FILE).read_bytes()
    (tmp_path / ALEXNET_FILE).write_bytes(data[: len(data) // 2])
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(tmp_path))
    message = load_error(lambda: load_lpips_alex("cpu"))
    assert message.startswith(f"{tmp_path / ALEXNET_FILE}: cannot read")


@pytest.mark.parametrize(
    ("contents", "problem"),
    [
        (lambda state: torch.zeros(3), "not a state dict"),
        (lambda state: {key: value for key, value in state.items() if key != "features.8.bias"}, "features.8.bias"),
        (lambda state: {**state, "features.12.weight": torch.zeros(1)}, "unexpected"),
        (lambda state: {**state, "features.3.weight": torch.zeros(192, 64, 3, 3)}, "shape"),
        (lambda state: {**state, "features.0.bias": torch.zeros(64, dtype=torch.int64)}, "dtype"),
    ],
)
def test_wrong_contents(
    contents: Callable[[dict[str, torch.Tensor]], object],
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    torch_home: Path,
) -> None:
    state = torch.load(WEIGHTS / ALEXNET_FILE, map_location="cpu", weights_only=True)
    torch.save(contents(state), tmp_path / ALEXNET_FILE)
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(tmp_path))
    message = load_error(lambda: load_lpips_alex("cpu"))
    assert message.startswith(f"{tmp_path / ALEXNET_FILE}: ")
    assert problem in message


def test_vgg16_file_in_place_of_alexnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_home: Path) -> None:
    shutil.copy(WEIGHTS / VGG16_FILE, tmp_path / ALEXNET_FILE)
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(tmp_path))
    message = load_error(lambda: load_lpips_alex("cpu"))
    assert str(tmp_path / ALEXNET_FILE) in message
    assert "wrong network" in message


def test_perceptual_features_prefer_vgg19_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import vgg19

    from flowsr_cli.eval.backbones import load_perceptual_features

    for name in ("alexnet_features.pth", "vgg16_features.pth"):
        (tmp_path / name).symlink_to(SHARED / "weights" / name)
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(tmp_path))
    layers, network = load_perceptual_features("cpu")
    assert network == "vgg16 conv5_3" and len(layers) == 29
    torch.manual_seed(0)
    fake = {f"features.{key}": value for key, value in vgg19().features.state_dict().items()}
    torch.save(fake, tmp_path / "vgg19_features.pth")
    layers, network = load_perceptual_features("cpu")
    assert network == "vgg19 conv5_4" and len(layers) == 35
    assert torch.equal(layers[34].weight, fake["features.34.weight"])
