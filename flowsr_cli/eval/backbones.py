"""ImageNet backbones (AlexNet for LPIPS, VGG16 for perceptual losses): local files first, else downloaded once.

The convolution weights come, in this order, from the folder of the ``backbone_dir`` setting
(``alexnet_features.pth`` / ``vgg16_features.pth``: torchvision ``features.*`` state dicts), from
torchvision's own checkpoint in the torch hub cache, or from torchvision's published checkpoint in
flowsr's cache (``cache_dir/backbones``), downloaded there on first use by the checked downloader:
pinned sha256 and size, the ``model_base_url`` mirror, the ``offline``, ``max_download_mb`` and
``download_timeout`` settings. Only ``features.*`` is loaded from a full checkpoint. Offline and without a
local file, a ``FlowsrError`` says how to provide one. torchvision and lpips are only ever asked for
random weights; lpips' own linear layers ship inside the lpips package.
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

    from flowsr_cli.config import Settings

__all__ = [
    "ALEXNET_FILE",
    "PINNED",
    "TORCHVISION_URL",
    "VGG16_FILE",
    "VGG19_FILE",
    "Pin",
    "load_lpips",
    "load_lpips_alex",
    "load_perceptual_features",
    "load_state_dict",
    "load_vgg16_features",
]

ALEXNET_FILE = "alexnet_features.pth"
VGG16_FILE = "vgg16_features.pth"
VGG19_FILE = "vgg19_features.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/"
"""Where torchvision publishes its checkpoints; the ``model_base_url`` setting replaces it (a mirror)."""
CACHE_FOLDER = "backbones"
"""The folder of ``cache_dir`` that downloaded checkpoints go to."""


@dataclass(frozen=True)
class Pin:
    """What a published checkpoint must be: its sha256 (lowercase hex) and size in bytes."""

    sha256: str
    size: int


PINNED: dict[str, Pin] = {
    "alexnet-owt-7be5be79.pth": Pin("7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02", 244_408_911),
    "vgg16-397923af.pth": Pin("397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0", 553_433_881),
}
"""torchvision's ImageNet checkpoints that flowsr downloads, by file name. Each sha256 starts with the 8 hex
digits torchvision puts in the file name (torchvision publishes no more of it) and each size matches the MB
torchvision records for the file (``tests/eval/test_backbone_download.py`` checks both); the full digests are
the ones several independent projects record for these files. VGG19 is never downloaded (the perceptual loss
uses it only when the user has it)."""


@dataclass(frozen=True)
class _Backbone:
    """One backbone: its file in ``backbone_dir``, torchvision's checkpoint name and what it is for people."""

    file_name: str
    hub_file_name: str
    description: str
    network: str

    @property
    def pin(self) -> Pin | None:
        """The sha256 and size of torchvision's checkpoint, if flowsr may download it."""
        return PINNED.get(self.hub_file_name)


_ALEXNET = _Backbone(ALEXNET_FILE, "alexnet-owt-7be5be79.pth", "torchvision AlexNet `features.*` state dict", "AlexNet")
_VGG16 = _Backbone(VGG16_FILE, "vgg16-397923af.pth", "torchvision VGG16 `features.*` state dict", "VGG16")
_VGG19 = _Backbone(VGG19_FILE, "vgg19-dcbb9e9d.pth", "torchvision VGG19 `features.*` state dict", "VGG19")

VGG16_CONV5_3 = 29
"""features[:29] ends at VGG16's conv5_3 before its ReLU."""
VGG19_CONV5_4 = 35
"""features[:35] ends at VGG19's conv5_4 before its ReLU, the layer of the paper's perceptual loss."""


def load_lpips_alex(device: torch.device | str = "cpu", settings: Settings | None = None) -> lpips.LPIPS:
    """LPIPS (net='alex', version 0.1), the evaluation metric, with ImageNet AlexNet weights (see the module)."""
    return load_lpips("alex", device, settings)


def load_lpips(net: str, device: torch.device | str = "cpu", settings: Settings | None = None) -> lpips.LPIPS:
    """LPIPS (``net`` 'alex' or 'vgg', version 0.1) with ImageNet weights (see the module); eval mode, frozen.

    lpips builds a randomly initialised torchvision network (``pnet_rand=True``, so lpips downloads
    nothing) and loads its linear calibration layers from the weights shipped inside the lpips
    package; the ``features.*`` weights are then copied into lpips' network slices, which keep
    torchvision's module indices (``slice2.3.weight`` is ``features.3.weight``).
    """
    import lpips

    state, path = _read_features({"alex": _ALEXNET, "vgg": _VGG16}[net], _settings(settings))
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


def load_vgg16_features(device: torch.device | str = "cpu", settings: Settings | None = None) -> nn.Sequential:
    """torchvision's ``vgg16().features`` with ImageNet weights (see the module); eval mode, frozen."""
    return _load_vgg(_VGG16, device, _settings(settings))


def load_perceptual_features(
    device: torch.device | str = "cpu", settings: Settings | None = None
) -> tuple[nn.Sequential, str]:
    """The perceptual-loss network and its name: VGG19 up to conv5_4 (the paper's) when its weights
    are on this machine, else VGG16 up to conv5_3 (downloaded if need be)."""
    settings = _settings(settings)
    try:
        vgg19 = _local(_VGG19, settings)
    except FlowsrError:  # backbone_dir without VGG19
        vgg19 = None
    if vgg19 is None:
        return _load_vgg(_VGG16, device, settings)[:VGG16_CONV5_3], "vgg16 conv5_3"
    return _load_vgg(_VGG19, device, settings)[:VGG19_CONV5_4], "vgg19 conv5_4"


def _load_vgg(backbone: _Backbone, device: torch.device | str, settings: Settings) -> nn.Sequential:
    from torchvision.models import vgg16, vgg19

    state, path = _read_features(backbone, settings)
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


def _settings(settings: Settings | None) -> Settings:
    """The caller's settings (with its flags), or the user's."""
    from flowsr_cli.config import Settings

    return Settings() if settings is None else settings


def _read_features(backbone: _Backbone, settings: Settings) -> tuple[object, Path]:
    """The raw contents of the backbone's weights file and its path (see :func:`_locate`)."""
    path = _locate(backbone, settings)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged files (EOF, zip, unpickling, ...)
        # First sentence only: torch's messages for damaged archives go on for several more.
        reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise FlowsrError(f"{path}: cannot read the {backbone.description} ({reason})") from None
    return state, path


def _locate(backbone: _Backbone, settings: Settings) -> Path:
    """Where the backbone's weights are: on this machine (:func:`_local`), else downloaded into the cache."""
    path = _local(backbone, settings)
    if path is not None:
        return path
    if backbone.pin is None:
        raise FlowsrError(f"no ImageNet weights for {backbone.file_name}: {_provide(backbone)}")
    return _download(backbone, backbone.pin, settings)


def _local(backbone: _Backbone, settings: Settings) -> Path | None:
    """The backbone's weights on this machine: from the backbone_dir setting (FlowsrError if it lacks them),
    else torchvision's checkpoint in the torch hub cache or in flowsr's cache (checked against its sha256)."""
    setting = settings.resolve("backbone_dir")
    if setting.value is not None:
        path = Path(setting.value) / backbone.file_name
        if not path.is_file():
            raise FlowsrError(
                f"{path} not found (backbone_dir {setting.value} is set by {setting.source}); "
                f"it should hold the {backbone.description}"
            )
        return path
    hub_cached = Path(torch.hub.get_dir()) / "checkpoints" / backbone.hub_file_name
    if hub_cached.is_file():
        return hub_cached
    cached = _cache_path(backbone, settings)
    if backbone.pin is None or not cached.is_file():
        return None
    _check_unchanged(cached, backbone.pin)
    return cached


def _cache_path(backbone: _Backbone, settings: Settings) -> Path:
    """Where torchvision's checkpoint of the backbone is downloaded to: ``cache_dir/backbones``."""
    return Path(settings["cache_dir"]) / CACHE_FOLDER / backbone.hub_file_name


def _check_unchanged(path: Path, pin: Pin) -> None:
    """FlowsrError when a downloaded checkpoint no longer has its pinned sha256."""
    from flowsr_cli.hub.download import sha256_of

    actual = sha256_of(path)
    if actual != pin.sha256:
        raise FlowsrError(
            f"{path} does not match its sha256 (expected {pin.sha256[:16]}…, found {actual[:16]}…); "
            "it changed after it was downloaded: delete it and rerun to download it again"
        )


def _download(backbone: _Backbone, pin: Pin, settings: Settings) -> Path:
    """torchvision's checkpoint of the backbone, downloaded into flowsr's cache (offline: FlowsrError)."""
    from flowsr_cli.console import report_note
    from flowsr_cli.hub.download import DownloadError, DownloadLimits, RemoteFile, download

    base = settings["model_base_url"] or TORCHVISION_URL
    url = base.rstrip("/") + "/" + backbone.hub_file_name
    target = _cache_path(backbone, settings)
    offline = settings.resolve("offline")
    if offline.value:
        raise FlowsrError(
            f"no ImageNet weights for {backbone.file_name}, and flowsr is offline ({_origin(offline.source)}): "
            f"download {url} (sha256 {pin.sha256}) to {target}, or {_provide(backbone)}"
        )
    report_note(
        f"downloading torchvision's ImageNet {backbone.network} weights ({pin.size / 2**20:.0f} MB, once) to {target}"
    )
    limits = DownloadLimits(settings["max_download_mb"], settings["download_timeout"])
    try:
        return download(RemoteFile(url, pin.sha256, pin.size), target, limits=limits)
    except DownloadError as error:
        raise DownloadError(f"{error}; or {_provide(backbone)}") from error


def _origin(source: str) -> str:
    """Where a setting came from, as the user wrote it: ``--offline``, ``env FLOWSR_OFFLINE``, ``file PATH``."""
    return "--offline" if source == "flag" else source


def _provide(backbone: _Backbone) -> str:
    """How the user provides the backbone's weights without a download."""
    return (
        f"put {backbone.file_name} ({backbone.description}) into a folder and run "
        "`flowsr config set backbone_dir FOLDER` (or set FLOWSR_BACKBONE_DIR)"
    )


def _frozen(module: nn.Module, device: torch.device | str) -> nn.Module:
    """``module`` on ``device``, in eval mode, with no parameter requiring gradients."""
    module = module.to(device).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
