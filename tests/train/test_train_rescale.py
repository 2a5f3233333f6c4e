"""`flowsr train rescale`: real tiny runs through the CLI, the losses going down, the original's losses and
quantiser, the ActNorm start, resume, validation, DDP under torchrun, usage errors and the recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flowsr_cli.eval.metrics import make_lr, psnr, psnr_y, ssim_y
from flowsr_cli.families.common.flow_layers import ActNorm
from flowsr_cli.families.hcflow.layers import quantise_8bit
from flowsr_cli.families.hcflow.rescaling import CPU_CONFIGS, HCFlowRescaler
from flowsr_cli.families.model_file import load_model
from flowsr_cli.families.registry import make
from flowsr_cli.train.data import Batch, BatchStream, CropRecipe, TrainingImages, find_training_images
from flowsr_cli.train.distributed import Cluster
from flowsr_cli.train.loop import RunFiles, Trainer
from flowsr_cli.train.objectives import RescaleObjective, flow_objective
from flowsr_cli.train.recipe import RESCALERS, load_recipe, rescaler_spec
from flowsr_cli.train.rescale_validation import RescaleValidation, rescale_metrics, round_trip
from flowsr_cli.train.state import spec_differences
from tests.conftest import REPO_ROOT, CliInvoker
from tests.families.hcflow.test_rescaling import TINY, TINY_X2

RECIPE = (
    "hr_crop = 16\nbatch_size = 4\nworkers = 0\nlearning_rate = 0.002\nmilestones = [0.9]\nlog_every = 1\n"
    "checkpoint_every = 3\nval_images = 2\n"
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def val(tmp_path: Path, photos: Path) -> Path:
    """One 40x48 HR crop of a photo and one image too small to validate on."""
    folder = tmp_path / "val"
    folder.mkdir()
    pixels = np.asarray(Image.open(sorted(photos.iterdir())[0]).convert("RGB"))
    Image.fromarray(pixels[100:140, 100:148]).save(folder / "crop.png")
    Image.fromarray(pixels[:12, :12]).save(folder / "tiny.png")
    return folder


def records(log: Path, key: str | None = None) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [record for record in lines if key is None or key in record]


def actnorm_starts(model: HCFlowRescaler) -> tuple[bool, bool]:
    """(the main flow's ActNorms are all the identity, every ActNorm is initialised)."""
    main = [step.actnorm for level in model.flow_levels for step in level.steps]
    identity = all(not layer.bias.any() and not layer.log_scale.any() for layer in main)
    return identity, all(bool(layer.initialized) for layer in model.modules() if isinstance(layer, ActNorm))


def test_train_rescale_exports_a_loadable_rescaler_whose_loss_went_down(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, recipe: Path, val: Path
) -> None:
    out = tmp_path / "run"
    result = run_cli("train", "rescale", str(photos), "--scale", "2", "--out", str(out), "--recipe", str(recipe),
                     "--steps", "24", "--val", str(val))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "use: flowsr rescale down IMAGE --scale 2 --model" in result.output
    model = load_model(out / "model.safetensors")
    assert isinstance(model, HCFlowRescaler) and model.scale == 2
    assert model.spec == rescaler_spec("hcflow-rescale-small", 2)
    steps = records(out / "log.jsonl", "l1")
    assert [record["step"] for record in steps] == list(range(1, 25))
    losses = [float(record["loss"]) for record in steps]  # type: ignore[arg-type]
    assert sum(losses[-6:]) < 0.8 * sum(losses[:6]), losses
    (validation,) = records(out / "log.jsonl", "validation")
    metrics = validation["validation"]
    assert isinstance(metrics, dict) and metrics.keys() == {"psnr_y", "ssim", "lr_bicubic_psnr"}
    assert metrics["lr_bicubic_psnr"] > 20 and metrics["psnr_y"] > 20, metrics
    stderr = " ".join(result.stderr.split())
    assert "tiny.png: too small for x2" in stderr
    assert "validation at step 24: PSNR-Y" in stderr and "LR vs bicubic" in stderr
    saved = load_recipe(out / "recipe.toml", {})
    assert (saved.arch, saved.scale_min, saved.scale_max, saved.val_scale) == ("hcflow-rescale-small", 2, 2, 2)
    assert (saved.adam_beta2, saved.grad_clip_value, saved.grad_clip_norm) == (0.99, 5.0, 100.0)


def test_the_quantiser_rounds_forward_and_passes_the_gradient_unchanged() -> None:
    x = torch.tensor([-0.3, 0.0, 0.1, 0.5, 0.70001, 1.0, 1.7], requires_grad=True)
    q = quantise_8bit(x)
    assert torch.equal(q, torch.tensor([0.0, 0.0, 26.0, 128.0, 179.0, 255.0, 255.0]) / 255)
    (q * torch.arange(7.0)).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.arange(7.0)), "gradient 1, also where the clamp cuts"


def _fresh(args: dict[str, object], seed: int = 0) -> HCFlowRescaler:
    torch.manual_seed(seed)
    model = make({"name": "hcflow-rescale", "args": args}).train()
    assert isinstance(model, HCFlowRescaler)
    return model


@pytest.mark.parametrize(("args", "lr_weight"), [(TINY, None), (TINY_X2, 3.0)])
def test_the_objective_is_the_originals_losses_from_the_box_mean_start(
    args: dict[str, object], lr_weight: float | None
) -> None:
    """The first call starts the conditional flows' ActNorms from the batch and leaves the main flow's at the
    identity (the LR stays the box mean); the losses are the original's (the LR term weighted 0.05 unless told),
    the inverse at heat 1 from the step's generator."""
    model = _fresh(args)
    hr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    bicubic = make_lr(hr, model.scale)[1]
    objective = RescaleObjective(model) if lr_weight is None else RescaleObjective(model, lr_weight)
    losses = objective(bicubic * 2 - 1, hr * 2 - 1, 0, torch.Generator().manual_seed(2))
    assert actnorm_starts(model) == (True, True)
    with torch.no_grad():
        lr, latents = model.to_latents(hr)
        assert (lr - F.avg_pool2d(hr, model.scale)).abs().max() < 1e-6
        lr = lr.clamp(0, 1)
        restored = model.upscale((lr * 255).round() / 255, 1.0, torch.Generator().manual_seed(2)).clamp(0, 1)
    lr_mse = F.mse_loss(lr, bicubic)
    latent = torch.cat([z.flatten() for z in latents]).square().mean()
    l1 = F.l1_loss(restored, hr)
    expected = {"lr_mse": lr_mse, "latent": latent, "l1": l1, "loss": (lr_weight or 0.05) * lr_mse + 1e-5 * latent + l1}
    assert losses.keys() == expected.keys()
    assert all(torch.allclose(losses[name], value, rtol=1e-5) for name, value in expected.items()), losses
    losses["loss"].backward()
    assert all(parameter.grad is not None for parameter in model.parameters()), "every weight learns"


def rescale_trainer(
    photos: Path, out: Path, steps: int, interrupt_after: int | None = None, **values: object
) -> Trainer:
    """A Trainer of a fresh tiny x4 rescaler on 16x16 HR crops (batch 2), through the registry's objective."""
    model = _fresh(TINY)
    recipe = load_recipe(None, {"arch": "hcflow-rescale-small", "hr_crop": 16, "batch_size": 2, "steps": steps,
                                "learning_rate": 2e-3, "log_every": 1, **values})  # fmt: skip
    crop = CropRecipe(recipe.lr_size, recipe.scale_min, recipe.scale_max, multiple=4, hr_crop=recipe.hr_crop)
    images = TrainingImages(find_training_images([photos]), crop)

    def batches(start: int) -> Iterator[Batch]:
        for index, batch in enumerate(BatchStream(images, crop, recipe.batch_size, recipe.seed, start)):
            if interrupt_after is not None and index == interrupt_after:
                raise KeyboardInterrupt
            yield batch

    objective = flow_objective(model, recipe, torch.device("cpu"))
    assert isinstance(objective, RescaleObjective) and objective.lr_weight == recipe.lr_fidelity_weight
    return Trainer(
        model, objective, recipe, batches, RunFiles(out), Cluster(), torch.device("cpu"), show_progress=False
    )


def test_interrupt_and_resume_gives_the_same_rescaler(tmp_path: Path, photos: Path) -> None:
    straight = rescale_trainer(photos, tmp_path / "straight", 6)
    straight.run()
    interrupted = rescale_trainer(photos, tmp_path / "halves", 6, interrupt_after=3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = rescale_trainer(photos, tmp_path / "halves", 6)
    resumed.run(resume=tmp_path / "halves" / "checkpoint.safetensors")
    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(expected[name], actual[name], atol=1e-6) for name in expected)
    assert [record["step"] for record in records(tmp_path / "halves" / "log.jsonl", "loss")] == [1, 2, 3, 4, 5, 6]
    assert load_model(tmp_path / "halves" / "model.safetensors").spec == {"name": "hcflow-rescale", "args": TINY}


def test_validation_scores_the_round_trip_and_the_lr_against_bicubic() -> None:
    model = _fresh(TINY).eval()
    hr = torch.rand(1, 3, 30, 33, generator=torch.Generator().manual_seed(3))
    metrics = rescale_metrics(model, hr)
    cropped, bicubic = make_lr(hr, 4)
    box = (F.avg_pool2d(cropped, 4) * 255).round() / 255  # a fresh model's LR: the box mean
    assert metrics["lr_bicubic_psnr"] == pytest.approx(float(psnr(box, bicubic)), abs=1e-4)
    lr, restored = round_trip(model, cropped, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(lr * 255, (lr * 255).round(), atol=1e-4) and restored.shape == cropped.shape
    assert metrics["psnr_y"] == pytest.approx(float(psnr_y(restored, cropped, 4)), abs=1e-6)
    assert metrics["ssim"] == pytest.approx(float(ssim_y(restored, cropped, 4)), abs=1e-6)
    assert RescaleValidation(model, [hr, hr], torch.device("cpu"))() == pytest.approx(metrics)


def test_torchrun_trains_a_rescaler_on_two_processes(tmp_path: Path, photos: Path, recipe: Path) -> None:
    """DDP with gloo: the conditional ActNorms start on rank 0's batch and are broadcast; one set of files."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "run"
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29553", "-m", "flowsr_cli", "train", "rescale",
         str(photos), "--out", str(out), "--recipe", str(recipe), "--steps", "2"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("model:") == 1
    assert [record["step"] for record in records(out / "log.jsonl")] == [1, 2]
    model = load_model(out / "model.safetensors")
    assert isinstance(model, HCFlowRescaler) and model.scale == 4
    assert actnorm_starts(model)[1]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["rescale", "--scale", "3"], "--scale: invalid value '3'; allowed: 2 or 4"),
        (["rescale", "--arch", "srflow-small", "--scale", "2"], "--arch 'srflow-small': choose one of hcflow-rescale,"),
        (["rescale", "--recipe", "{linf}"], ".toml: arch 'linf-small': choose one of hcflow-rescale, hcflow-rescale-"),
        (["rescale", "--recipe", "{scales}"], "hcflow-rescale-small rescales x2 or x4: scale_min, scale_max and"),
        (["rescale", "--recipe", "{finetune}"], "finetune is for train flow; hcflow-rescale-small has no fine-tuning"),
        (["flow", "--arch", "hcflow-rescale-small"], "--arch 'hcflow-rescale-small': choose one of linf-edsr"),
    ],
)
def test_rescale_usage_errors_are_one_line_and_exit_2(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, command: list[str], message: str
) -> None:
    files = {"{scales}": "scale_min = 2.0\n", "{finetune}": "finetune = true\n", "{linf}": 'arch = "linf-small"\n'}
    for name, text in files.items():
        (tmp_path / f"{name[1:-1]}.toml").write_text(text)
    args = [str(tmp_path / f"{arg[1:-1]}.toml") if arg in files else arg for arg in command]
    result = run_cli("train", args[0], str(photos), "--out", str(tmp_path / "out"), "--steps", "1", *args[1:])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_architectures_and_recipes() -> None:
    """hcflow-rescale is the original's network (the class defaults: 4.40 M at x4), hcflow-rescale-small the CPU
    configs; the original's optimiser and schedule are the defaults; the recipe scripts load."""
    assert set(RESCALERS) == {"hcflow-rescale", "hcflow-rescale-small"}
    with torch.device("meta"):
        original = make(rescaler_spec("hcflow-rescale", 4))
    assert sum(parameter.numel() for parameter in original.parameters()) == 4_396_206
    assert rescaler_spec("hcflow-rescale", 2)["args"] == {**rescaler_spec("hcflow-rescale", 4)["args"],
                                                          "levels": 1, "steps": [8], "cond_steps": [6]}  # fmt: skip
    assert rescaler_spec("hcflow-rescale-small", 4)["args"] == {"levels": 2, **CPU_CONFIGS["x4-small"]}
    assert rescaler_spec("hcflow-rescale-small", 2)["args"] == {"levels": 1, **CPU_CONFIGS["x2-small"]}
    defaults = load_recipe(None, {"arch": "hcflow-rescale"})
    assert (defaults.scale_max, defaults.hr_crop, defaults.batch_size, defaults.learning_rate) == (4.0, 160, 16, 2.5e-4)
    assert defaults.milestones == [0.2, 0.4, 0.6, 0.8, 0.9] and defaults.gamma == 0.5
    assert defaults.lr_fidelity_weight == 0.05  # the original's
    for scale in (2, 4):
        scripted = load_recipe(REPO_ROOT / f"scripts/recipes/hcflow-rescale-x{scale}.toml", {})
        assert (scripted.arch, scripted.scale_min, scripted.scale_max, scripted.val_scale) == (
            "hcflow-rescale-small", scale, scale, scale,
        )  # fmt: skip
        assert (scripted.adam_beta2, scripted.grad_clip_value, scripted.grad_clip_norm) == (0.99, 5.0, 100.0)
        assert scripted.time_budget > 0 and scripted.hr_crop % scale == 0 and scripted.lr_fidelity_weight == 1.0


def test_train_rescale_help_shows_the_scale_architectures_and_examples(run_cli: CliInvoker) -> None:
    result = run_cli("train", "rescale", "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "[default: (recipe: 4)]" in text and "[default: (recipe: 0.00025)]" in text
    assert "hcflow-rescale-small" in text.split("Examples")[0]
    assert text.split("Examples", 1)[1].count("flowsr train rescale ") == 3


def test_a_checkpoint_of_another_scale_names_what_differs() -> None:
    differences = spec_differences(rescaler_spec("hcflow-rescale-small", 4), rescaler_spec("hcflow-rescale-small", 2))
    assert "levels: 2 in the file, 1 here" in differences
    paper_size = spec_differences(rescaler_spec("hcflow-rescale", 4), rescaler_spec("hcflow-rescale-small", 4))
    assert "rrdb_channels: 64 in the file, 32 here" in paper_size and "levels" not in paper_size
    assert spec_differences({"name": "linf", "args": {}}, rescaler_spec("hcflow-rescale-small", 4)) == (
        "a linf in the file, a hcflow-rescale here"
    )
    flow_of = {"name": "lp", "args": {"flow": rescaler_spec("hcflow-rescale-small", 4), "width": 8}}
    other_flow = {"name": "lp", "args": {"flow": rescaler_spec("hcflow-rescale-small", 2), "width": 8}}
    assert spec_differences(flow_of, other_flow) == (
        "flow.cond_steps: [4, 4] in the file, [4] here; flow.levels: 2 in the file, 1 here; "
        "flow.steps: [6, 6] in the file, [6] here"
    )
    assert spec_differences(flow_of, {"name": "lp", "args": {"flow": {"name": "linf", "args": {}}, "width": 16}}) == (
        "flow: a hcflow-rescale in the file, a linf here; width: 8 in the file, 16 here"
    )
