"""LINF: exact likelihood, invertibility, arbitrary-scale rendering, sampling, files and import."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.engine.resize import resize
from flowsr_cli.families.common.coords import fold_patches, patch_centres, unfold_patches
from flowsr_cli.families.importing import CheckpointImportError, convert_original
from flowsr_cli.families.linf.engine import FlowUpscaler
from flowsr_cli.families.linf.network import LINF
from flowsr_cli.families.model_file import ModelFileError, load_model, save_model
from flowsr_cli.families.registry import ModelSpecError, make
from flowsr_cli.io.sizing import Size, SizeRequest
from tests.conftest import SHARED, CliInvoker

TINY_ENCODER = {"name": "edsr-baseline", "args": {"channels": 8, "blocks": 1}}


def tiny_linf(patch_size: int = 3, seed: int = 0) -> LINF:
    torch.manual_seed(seed)
    spec = {
        "name": "linf",
        "args": {"encoder": TINY_ENCODER, "patch_size": patch_size, "hidden": 16, "mlp_layers": 2, "flow_layers": 4},
    }
    model = make(spec)
    assert isinstance(model, LINF)
    return model.eval()


def render(
    model: LINF, lr: torch.Tensor, size: Size, seed: int = 0, temperature: float = 0.8, **kwargs: int
) -> torch.Tensor:
    """The whole float output of the flow engine (untiled unless ``tile`` is given)."""
    options = {"tile": 0, **kwargs}
    upscaler = FlowUpscaler(model, torch.device("cpu"), torch.float32, temperature, name="test", **options)
    return collect(upscaler, lr, size, [seed])[0]


def collect(upscaler: object, lr: torch.Tensor, size: Size, seeds: list[int]) -> list[torch.Tensor]:
    """Assemble what an upscaler sends to its sink into whole images, checking each pixel arrives once."""
    images = [torch.full((1, lr.shape[1], size.height, size.width), float("nan")) for _ in seeds]
    writes = [torch.zeros(size.height, size.width, dtype=torch.int32) for _ in seeds]

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        images[sample][..., rows.start : rows.stop, columns.start : columns.stop] = tile
        writes[sample][rows.start : rows.stop, columns.start : columns.stop] += 1

    upscaler.upscale(lr, size, sink, seeds)  # type: ignore[attr-defined]
    assert all(bool((count == 1).all()) for count in writes), "every output pixel must be written exactly once"
    return images


@pytest.mark.parametrize("patch_size", [1, 3])
def test_sample_inverts_log_prob(patch_size: int) -> None:
    model = tiny_linf(patch_size)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(64, model.dim, generator=generator) * 0.3
        condition = torch.randn(64, model.flow.condition_size, generator=generator)
        _, z = model.log_prob(x, condition)
        assert torch.allclose(model.sample(condition, z), x, atol=1e-4)


def test_latents_equal_log_prob_and_the_cached_inverse_follows_the_weights() -> None:
    model = tiny_linf(3)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(32, model.dim, generator=generator) * 0.3
    condition = torch.randn(32, model.flow.condition_size, generator=generator)
    assert torch.allclose(model.latents(x, condition), model.log_prob(x, condition)[1], atol=1e-5)
    with torch.no_grad():
        z = model.latents(x, condition)
        assert torch.allclose(model.sample(condition, z), x, atol=1e-4)
        for linear in model.flow.linears:  # in place, as an optimizer step or load_state_dict changes them
            linear.weight.mul_(1.5)
            linear.bias.add_(0.1)
        z = model.latents(x, condition)
        assert torch.allclose(model.sample(condition, z), x, atol=1e-4), "a stale inverse was used"
    model.sample(condition, z).square().sum().backward()  # with gradients the inverse is not cached
    assert all(linear.weight.grad is not None for linear in model.flow.linears)


def test_an_inverse_cached_during_inference_serves_a_later_gradient_step() -> None:
    """A frozen flow (LINF-LP training) caches its inverse during validation, under inference_mode;
    the next training step must still differentiate through it with respect to the latents."""
    model = tiny_linf(3).requires_grad_(False)
    generator = torch.Generator().manual_seed(4)
    condition = torch.randn(16, model.flow.condition_size, generator=generator)
    z = torch.randn(16, model.dim, generator=generator)
    with torch.inference_mode():
        expected = model.sample(condition, z)
    latent = z.clone().requires_grad_(True)
    output = model.sample(condition, latent)
    output.square().sum().backward()
    assert torch.allclose(output.detach(), expected) and latent.grad is not None


@pytest.mark.parametrize("patch_size", [1, 3])
def test_log_determinant_matches_autograd_jacobian(patch_size: int) -> None:
    model = tiny_linf(patch_size).double()
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):
        x = torch.randn(model.dim, generator=generator, dtype=torch.float64)
        condition = torch.randn(1, model.flow.condition_size, generator=generator, dtype=torch.float64)
        log_p, z = model.log_prob(x[None], condition)
        jacobian = torch.autograd.functional.jacobian(lambda v, c=condition: model.log_prob(v[None], c)[1][0], x)
        log_base = -0.5 * (z.pow(2).sum() + model.dim * math.log(2 * math.pi))
        assert torch.allclose(log_p[0] - log_base, torch.linalg.slogdet(jacobian)[1], atol=1e-8)


def test_tiny_model_overfits_one_image() -> None:
    torch.manual_seed(0)
    hr_pixels = np.asarray(PILImage.open(SHARED / "data/eval/Set5/butterfly.png").convert("RGB"))[60:96, 60:96]
    hr = torch.from_numpy(hr_pixels.copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    lr = resize(hr, (18, 18))
    model = tiny_linf(3).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        loss = model.nll(lr, hr)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    windows = [sum(losses[i : i + 50]) / 50 for i in range(0, 300, 50)]
    assert all(later < earlier for earlier, later in zip(windows, windows[1:])), windows
    assert windows[-1] < windows[0] - 20, windows


def test_nll_samples_queries_and_rejects_unaligned_crops() -> None:
    model = tiny_linf(3)
    lr, hr = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 24, 24) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    assert torch.isfinite(model.nll(lr, hr, queries=10, generator=generator))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.nll(lr, torch.rand(2, 3, 25, 24))


@pytest.mark.parametrize("patch_size", [1, 3])
@pytest.mark.parametrize("lr_size", [(9, 12), (10, 7)])
def test_any_scale_gives_the_exact_size_and_chunking_does_not_matter(patch_size: int, lr_size: tuple[int, int]) -> None:
    model = tiny_linf(patch_size)
    lr = torch.rand(1, 3, *lr_size)
    for scale in (1, 1.37, 2, 3, 3.5, 4, 7.9, 12):
        size = SizeRequest(scale=scale).target(Size(lr_size[1], lr_size[0]))
        whole = render(model, lr, size)
        assert whole.shape == (1, 3, size.height, size.width)
        assert torch.isfinite(whole).all()
        chunked = render(model, lr, size, chunk_queries=5)
        assert torch.allclose(whole, chunked, atol=1e-5)


def test_patch_grid_extrapolates_past_the_border() -> None:
    assert torch.allclose(patch_centres(10, 3), torch.tensor([-0.7, -0.1, 0.5, 1.1]))
    assert torch.allclose(patch_centres(4, 1), torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    image = torch.arange(2 * 3 * 6 * 9, dtype=torch.float32).view(2, 3, 6, 9)
    vectors = unfold_patches(image, 3)
    assert vectors.shape == (2, 6, 27)
    assert torch.equal(vectors[0, 1], image[0, :, 0:3, 3:6].reshape(-1))
    assert torch.equal(fold_patches(vectors, 2, 3, 3), image)


def test_seed_and_temperature_semantics() -> None:
    model = tiny_linf(3)
    lr, size = torch.rand(1, 3, 8, 11), Size(30, 22)
    first = render(model, lr, size, seed=5)
    assert torch.equal(first, render(model, lr, size, seed=5))
    assert (first - render(model, lr, size, seed=6)).abs().max() > 1e-3
    assert torch.equal(render(model, lr, size, seed=5, temperature=0), render(model, lr, size, seed=9, temperature=0))


def test_save_then_load_gives_bit_identical_outputs(tmp_path: Path) -> None:
    model = tiny_linf(3)
    save_model(model, tmp_path / "linf.safetensors")
    loaded = load_model(tmp_path / "linf.safetensors")
    assert loaded.spec == model.spec
    lr = torch.rand(1, 3, 7, 9)
    assert torch.equal(render(model, lr, Size(25, 20)), render(loaded, lr, Size(25, 20)))


def test_paper_sizes() -> None:
    edsr = make({"name": "linf", "args": {"encoder": {"name": "edsr-baseline", "args": {}}}})
    rrdb = make({"name": "linf", "args": {"encoder": {"name": "rrdb", "args": {}}}})
    assert sum(p.numel() for p in edsr.parameters()) == pytest.approx(2.06e6, rel=0.01)
    assert sum(p.numel() for p in edsr.encoder.parameters()) == pytest.approx(1.22e6, rel=0.01)
    assert sum(p.numel() for p in rrdb.parameters()) == pytest.approx(17.5e6, rel=0.01)


def test_registry_and_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match="unknown model architecture 'nope'"):
        make({"name": "nope"})
    with pytest.raises(ModelSpecError, match="bad arguments for model 'edsr-baseline'"):
        make({"name": "edsr-baseline", "args": {"width": 3}})
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ModelFileError, match="not a readable .safetensors"):
        load_model(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelFileError, match="not a flowsr model"):
        load_model(tmp_path / "foreign.safetensors")
    save_model(tiny_linf(3), tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "cut.safetensors")


def original_layout(model: LINF, name: str) -> dict[str, object]:
    """What the original LINF code would have saved for ``model`` (its key layout and pickle structure)."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("mlp."):
            key = "layers." + key.removeprefix("mlp.")
            value = value[..., None, None] if value.dim() == 2 else value
        elif key.startswith("flow."):
            key = "imnet." + key.removeprefix("flow.").replace(".weight", "._weight")
        state[key] = value.clone()
    state["encoder.sub_mean.weight"] = torch.eye(3)[..., None, None]
    args = model.spec["args"]
    original_args = {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
        "imnet_spec": {"name": "flow", "args": {"name": "flow"}},
        "flow_layers": args["flow_layers"],
        "num_layer": args["mlp_layers"],
        "hidden_dim": args["hidden"],
    }
    if name == "linf-patch":
        original_args["patch_size"] = args["patch_size"]
    return {"model": {"name": name, "args": original_args, "sd": state}, "epoch": 7}


@pytest.mark.parametrize(("name", "patch_size"), [("linf", 1), ("linf-patch", 3)])
def test_import_original_checkpoint_reproduces_outputs(
    run_cli: CliInvoker, tmp_path: Path, name: str, patch_size: int
) -> None:
    model = tiny_linf(patch_size)
    torch.save(original_layout(model, name), tmp_path / "original.pth")
    imported = convert_original(tmp_path / "original.pth")
    lr = torch.rand(1, 3, 6, 8)
    assert torch.equal(render(model, lr, Size(19, 14)), render(imported, lr, Size(19, 14)))

    result = run_cli("models", "import", str(tmp_path / "original.pth"), "--name", "mine")
    assert result.exit_code == 0, result.output
    make_photo = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8))
    make_photo.save(tmp_path / "x.png")
    upscaled = run_cli("upscale", str(tmp_path / "x.png"), "--model", "mine", "--scale", "2.5", "--seed", "3")
    assert upscaled.exit_code == 0, upscaled.output
    assert PILImage.open(tmp_path / "x_x2.5_mine_seed3.png").size == (20, 15)
    again = run_cli("models", "import", str(tmp_path / "original.pth"), "--name", "mine")
    assert again.exit_code == 2 and "--force" in again.stderr


def test_import_rejects_unknown_layouts_and_pickled_code(tmp_path: Path) -> None:
    checkpoint = original_layout(tiny_linf(3), "linf-patch")
    checkpoint["model"]["sd"]["extra.weight"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "extra.pth")
    with pytest.raises(CheckpointImportError, match="unrecognised weights: extra.weight"):
        convert_original(tmp_path / "extra.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointImportError, match="not an original LINF checkpoint"):
        convert_original(tmp_path / "other.pth")
    marker = tmp_path / "executed"
    torch.save({"model": _RunsCode(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointImportError, match="weights-only"):
        convert_original(tmp_path / "evil.pth")
    assert not marker.exists()


class _RunsCode:
    """An object whose unpickling would create a file (a harmless stand-in for malicious code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "pwned"))


def test_cli_upscales_with_a_model_file(run_cli: CliInvoker, tmp_path: Path) -> None:
    save_model(tiny_linf(3), tmp_path / "linf.safetensors")
    pixels = np.random.default_rng(1).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(tmp_path / "x.png")
    model = str(tmp_path / "linf.safetensors")
    result = run_cli("upscale", str(tmp_path / "x.png"), "--model", model, "--scale", "3.5")
    assert result.exit_code == 0, result.output
    assert PILImage.open(tmp_path / "x_x3.5_linf.png").size == (74, 46)

    samples = run_cli("upscale", str(tmp_path / "x.png"), "--model", model, "-s", "2", "--samples", "3", "-t", "0.9")
    assert samples.exit_code == 0, samples.output
    outputs = [np.asarray(PILImage.open(tmp_path / f"x_x2_linf_t0.9_s{index}.png")) for index in range(3)]
    assert all(image.shape == (26, 42, 3) for image in outputs)
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[1], outputs[2])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prior", "learned"], "has no learned prior"),
        (["--samples", "2", "--temperature", "0"], "gives one output per input"),
        (["--model", "missing-model"], "unknown model 'missing-model'"),
    ],
)
def test_cli_model_usage_errors(run_cli: CliInvoker, tmp_path: Path, args: list[str], message: str) -> None:
    save_model(tiny_linf(3), tmp_path / "linf.safetensors")
    PILImage.new("RGB", (5, 4)).save(tmp_path / "x.png")
    base = ["upscale", str(tmp_path / "x.png"), "--scale", "2", "--model", str(tmp_path / "linf.safetensors")]
    result = run_cli(*base, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def _original_rrdb_key(key: str) -> str:
    """The original RRDBNet's name for a flowsr RRDB encoder key (inverse of the importer's renaming)."""
    if match := re.match(r"^encoder\.body\.(\d+)\.blocks\.(\d+)\.(?:convs\.(\d+)|fuse)\.(weight|bias)$", key):
        block, dense, conv, kind = match.groups()
        number = int(conv) + 1 if conv is not None else 5
        return f"encoder.RRDB_trunk.{block}.RDB{int(dense) + 1}.conv{number}.{kind}"
    return key.replace("encoder.conv_body.", "encoder.trunk_conv.")


def test_an_original_rrdb_linf_with_its_unused_upsampling_tail_imports_exactly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    encoder = {"name": "rrdb", "args": {"channels": 8, "blocks": 2, "growth": 4}}
    args = {"encoder": encoder, "patch_size": 3, "hidden": 16, "mlp_layers": 2, "flow_layers": 2}
    model = make({"name": "linf", "args": args})
    checkpoint = original_layout(model.eval(), "linf-patch")
    original = checkpoint["model"]
    state = {_original_rrdb_key(key): value for key, value in original["sd"].items() if "sub_mean" not in key}
    for tail in ("upconv1", "upconv2", "HRconv", "conv_last"):  # built by RRDBNet even with no_upsampling
        state[f"encoder.{tail}.weight"] = torch.zeros(3 if tail == "conv_last" else 8, 8, 3, 3)
    original["sd"] = state
    original["args"]["encoder_spec"] = {"name": "rrdb", "args": {"no_upsampling": True}}
    torch.save(checkpoint, tmp_path / "rrdb-linf.pth")
    imported = convert_original(tmp_path / "rrdb-linf.pth")
    lr = torch.rand(1, 3, 7, 9)
    assert torch.equal(render(model, lr, Size(25, 21)), render(imported, lr, Size(25, 21)))
