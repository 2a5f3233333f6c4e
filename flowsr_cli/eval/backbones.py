"""ImageNet backbones (AlexNet for LPIPS, VGG16 for perceptual losses) without ever downloading.

The convolution weights come, in this order, from the folder of the ``backbone_dir`` setting
(``alexnet_features.pth`` / ``vgg16_features.pth``: torchvision ``features.*`` state dicts), or from
torchvision's own checkpoint if it is already in the torch hub cache. Otherwise a ``FlowsrError``
tells the user how to provide them; torchvision and lpips are only ever asked for random weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from flowsr_cli.errors import FlowsrError

if TYPE_CHECKING:
    import lpips

__all__ = [
    "ALEXNET_FILE",
    "VGG16_FILE",
    "VGG19_FILE",
    "load_lpips",
    "load_lpips_alex",
    "load_perceptual_features",
    "load_state_dict",
    "load_vgg16_features",
]

ALEXNET_FILE = "alexnet_features.pth"
VGG16_FILE = "vgg16_features.pth"
VGG19_FILE = "vgg19_features.pth"


@dataclass(frozen=True)
class _Backbone:
    """One backbone: its file in ``backbone_dir`` and torchvision's checkpoint in the torch hub cache."""

    file_name: str
    hub_file_name: str
    description: str


_ALEXNET = _Backbone(ALEXNET_FILE, "alexnet-owt-7be5be79.pth", "torchvision AlexNet `features.*` state dict")
_VGG16 = _Backbone(VGG16_FILE, "vgg16-397923af.pth", "torchvision VGG16 `features.*` state dict")
_VGG19 = _Backbone(VGG19_FILE, "vgg19-dcbb9e9d.pth", "torchvision VGG19 `features.*` state dict")

VGG16_CONV5_3 = 29
"""features[:29] ends at VGG16's conv5_3 before its ReLU."""
VGG19_CONV5_4 = 35
"""features[:35] ends at VGG19's conv5_4 before its ReLU, the layer of the paper's perceptual loss."""


def load_lpips_alex(device: torch.device | str = "cpu") -> lpips.LPIPS:
    """LPIPS (net='alex', version 0.1), the evaluation metric, with ImageNet AlexNet weights from local files."""
    return load_lpips("alex", device)


def load_lpips(net: str, device: torch.device | str = "cpu") -> lpips.LPIPS:
    """LPIPS (``net`` 'alex' or 'vgg', version 0.1) with ImageNet weights from local files; eval mode, frozen.

    lpips builds a randomly initialised torchvision network (``pnet_rand=True``, so nothing is
    downloaded) and loads its linear calibration layers from the weights shipped inside the lpips
    package; the ``features.*`` weights are then copied into lpips' network slices, which keep
    torchvision's module indices (``slice2.3.weight`` is ``features.3.weight``).
    """
    import lpips

    state, path = _read_features({"alex": _ALEXNET, "vgg": _VGG16}[net])
    with warnings.catch_warnings():
        # lpips still calls torchvision.models.alexnet(pretrained=False), a deprecated spelling of weights=None.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    net_state = model.net.state_dict()
    # "slice2.3.weight" -> "features.3.weight": the slices' children are named by their torchvision index.
    features_key = {name: "features." + name.split(".", 1)[1] for name in net_state}
    features = load_state_dict(state, {features_key[name]: tensor for name, tensor in net_state.items()}, path)
    model.net.load_state_dict({name: features[key] for name, key in features_key.items()}, strict=True)
    return _frozen(model, device)


def load_vgg16_features(device: torch.device | str = "cpu") -> nn.Sequential:
    """torchvision's ``vgg16().features`` with ImageNet weights from local files; eval mode, frozen."""
    return _load_vgg(_VGG16, device)


def load_perceptual_features(device: torch.device | str = "cpu") -> tuple[nn.Sequential, str]:
    """The perceptual-loss network and its name: VGG19 up to conv5_4 (the paper's) when its weights
    are available, else VGG16 up to conv5_3."""
    try:
        _locate(_VGG19)
    except FlowsrError:
        return load_vgg16_features(device)[:VGG16_CONV5_3], "vgg16 conv5_3"
    return _load_vgg(_VGG19, device)[:VGG19_CONV5_4], "vgg19 conv5_4"


def _load_vgg(backbone: _Backbone, device: torch.device | str) -> nn.Sequential:
    from torchvision.models import vgg16, vgg19

    state, path = _read_features(backbone)
    # Built on the meta device: the classifier is never allocated, every features tensor is loaded below.
    with torch.device("meta"):
        layers = (vgg19 if backbone is _VGG19 else vgg16)().features
    expected = {f"features.{key}": tensor for key, tensor in layers.state_dict().items()}
    features = load_state_dict(state, expected, path)
    layers.load_state_dict({key.removeprefix("features."): tensor for key, tensor in features.items()}, assign=True)
    return _frozen(layers, device)


def load_state_dict(state: object, expected: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of ``state`` (read from ``path``), checked against ``expected``, as float32.

    ``expected`` maps each ``features.*`` key to a tensor of the right shape. Every expected key must
    be present with that shape and a floating dtype, and no other ``features.*`` key may be present
    (other keys, e.g. a full torchvision checkpoint's ``classifier.*``, are ignored). A problem
    raises a ``FlowsrError`` naming ``path``.
    """
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise FlowsrError(f"{path}: not a state dict of tensors (found {type(state).__name__})")
    features = {key: tensor for key, tensor in state.items() if isinstance(key, str) and key.startswith("features.")}
    missing = sorted(set(expected) - set(features))
    if missing:
        raise FlowsrError(f"{path}: missing {len(missing)} backbone tensors ({', '.join(missing[:4])}); wrong network?")
    unexpected = sorted(set(features) - set(expected))
    if unexpected:
        raise FlowsrError(f"{path}: unexpected backbone tensors {', '.join(unexpected[:4])}; wrong network?")
    for key, reference in expected.items():
        if features[key].shape != reference.shape:
            raise FlowsrError(
                f"{path}: {key} has shape {tuple(features[key].shape)}, expected {tuple(reference.shape)}; "
                "wrong network?"
            )
        if not features[key].is_floating_point():
            raise FlowsrError(f"{path}: {key} has dtype {features[key].dtype}, expected floating point")
    return {key: features[key].float() for key in expected}


def _read_features(backbone: _Backbone) -> tuple[object, Path]:
    """The raw contents of the backbone's weights file and its path, from backbone_dir or the torch hub cache."""
    path = _locate(backbone)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged files (EOF, zip, unpickling, ...)
        # First sentence only: torch's messages for damaged archives go on for several more.
        reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise FlowsrError(f"{path}: cannot read the {backbone.description} ({reason})") from None
    return state, path


def _locate(backbone: _Backbone) -> Path:
    """Where the backbone's weights are: the backbone_dir setting, else the torch hub cache; FlowsrError if neither."""
    from flowsr_cli.config import Settings

    setting = Settings().resolve("backbone_dir")
    if setting.value is not None:
        path = Path(setting.value) / backbone.file_name
        if not path.is_file():
            raise FlowsrError(
                f"{path} not found (backbone_dir {setting.value} is set by {setting.source}); "
                f"it should hold the {backbone.description}"
            )
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / backbone.hub_file_name
    if cached.is_file():
        return cached
    raise FlowsrError(
        f"no ImageNet weights for {backbone.file_name}: put {backbone.file_name} ({backbone.description}) into a "
        "folder and run `flowsr config set backbone_dir FOLDER` (or set FLOWSR_BACKBONE_DIR); flowsr never downloads it"
    )


def _frozen(module: nn.Module, device: torch.device | str) -> nn.Module:
    """``module`` on ``device``, in eval mode, with no parameter requiring gradients."""
    module = module.to(device).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
