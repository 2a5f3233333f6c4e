"""`flowsr train`: real (tiny) training steps on real photos, resume, DDP, recipes, failure modes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import Result

from flowsr_cli.config import Settings
from flowsr_cli.errors import FlowsrError, UsageError
from flowsr_cli.families.linf.prior import LINFLP, LatentFade
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.hub.catalog import Hub
from flowsr_cli.train.data import BatchStream, CropRecipe, TrainingImages, find_training_images
from flowsr_cli.train.distributed import Cluster
from flowsr_cli.train.loop import RunFiles, Trainer
from flowsr_cli.train.objectives import FlowObjective
from flowsr_cli.train.recipe import Recipe, learning_rate_at, load_recipe
from tests.conftest import SHARED, CliInvoker
from tests.families.linf.test_linf import tiny_linf

RECIPE = "lr_size = 24\nqueries = 256\nlearning_rate = 0.002\nlog_every = 1\ncheckpoint_every = 5\nval_images = 1\n"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    for path in sorted((SHARED / "data/train/bsds500_train").iterdir())[:3]:
        shutil.copy(path, folder / path.name)
    return folder.parent


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    save_model(tiny_linf(3), tmp_path / "tiny.safetensors")
    return tmp_path / "tiny.safetensors"


def losses(log: Path, key: str = "loss") -> list[float]:
    return [record[key] for line in log.read_text().splitlines() if key in (record := json.loads(line))]


def test_train_flow_lowers_the_loss_and_exports_a_usable_model(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    (tmp_path / "recipe.toml").write_text(RECIPE + "val_every = 20\n")
    out = tmp_path / "run"
    result = run_cli(
        "train", "flow", str(photos), "--out", str(out), "--init", str(tiny_model), "--recipe",
        str(tmp_path / "recipe.toml"), "--steps", "40", "--batch-size", "4", "--workers", "0",
        "--val", str(SHARED / "data/eval/Set5"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    values = losses(out / "log.jsonl")
    assert len(values) == 40
    assert sum(values[-5:]) / 5 < sum(values[:5]) / 5 - 3, values
    validations = [
        json.loads(line)["validation"] for line in (out / "log.jsonl").read_text().splitlines() if "validation" in line
    ]
    assert len(validations) == 2 and all(entry["psnr_y"] > 15 for entry in validations)
    assert (out / "recipe.toml").read_text().count("steps = 40") == 1

    PILImage.open(sorted(photos.rglob("*.jpg"))[0]).crop((0, 0, 40, 30)).save(tmp_path / "x.png")
    upscaled = run_cli(
        "upscale", str(tmp_path / "x.png"), "-s", "2.5", "--model", str(out / "model.safetensors"),
        "-o", str(tmp_path / "up.png"),
    )  # fmt: skip
    assert upscaled.exit_code == 0, upscaled.output
    assert PILImage.open(tmp_path / "up.png").size == (100, 75)
    evaluated = run_cli(
        "eval", str(SHARED / "data/eval/Set5"), "--model", str(out / "model.safetensors"), "--scales", "3",
        "--max-images", "1", "--baseline", "none", "--json", str(tmp_path / "e.json"),
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "e.json").read_text())["results"][0]["inf_rate"] == 0.0


def make_trainer(model_path: Path, photos: Path, out: Path, interrupt_after: int | None = None) -> Trainer:
    torch.manual_seed(0)
    model = load_model(model_path).train()
    recipe = load_recipe(None, {"lr_size": 24, "queries": 128, "learning_rate": 2e-3, "steps": 8, "batch_size": 2})
    crop = CropRecipe(recipe.lr_size, recipe.scale_min, recipe.scale_max, multiple=3)
    images = TrainingImages(find_training_images([photos]), crop)

    def batches(start: int):  # type: ignore[no-untyped-def]
        for index, batch in enumerate(BatchStream(images, crop, recipe.batch_size, recipe.seed, start)):
            if interrupt_after is not None and index == interrupt_after:
                raise KeyboardInterrupt
            yield batch

    objective = FlowObjective(model, recipe.queries)
    return Trainer(
        model, objective, recipe, batches, RunFiles(out), Cluster(), torch.device("cpu"), show_progress=False
    )


@pytest.mark.robustness
def test_interrupt_and_resume_gives_the_same_parameters(tmp_path: Path, photos: Path, tiny_model: Path) -> None:
    straight = make_trainer(tiny_model, photos, tmp_path / "straight")
    straight.run()
    interrupted = make_trainer(tiny_model, photos, tmp_path / "halves", interrupt_after=4)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    assert (tmp_path / "halves" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "halves" / "model.safetensors").exists()
    resumed = make_trainer(tiny_model, photos, tmp_path / "halves")
    resumed.run(resume=tmp_path / "halves" / "checkpoint.safetensors")
    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(expected[name], actual[name], atol=1e-6) for name in expected)
    assert not all(torch.equal(expected[name], load_model(tiny_model).state_dict()[name]) for name in expected)


@pytest.mark.robustness
def test_non_finite_losses_stop_training_with_a_clear_error(tmp_path: Path, photos: Path) -> None:
    broken = tiny_linf(3)
    with torch.no_grad():
        broken.flow.last.bias.fill_(float("nan"))
    save_model(broken, tmp_path / "broken.safetensors")
    trainer = make_trainer(tmp_path / "broken.safetensors", photos, tmp_path / "run")
    trainer.recipe.steps = 100
    with pytest.raises(FlowsrError, match="non-finite losses in a row"):
        trainer.run()
    skipped = [line for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if "skipped" in line]
    assert len(skipped) == 21


def test_time_budget_fixes_the_step_count(run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_model: Path) -> None:
    (tmp_path / "recipe.toml").write_text(RECIPE)
    out = tmp_path / "run"
    result = run_cli(
        "train", "flow", str(photos), "--out", str(out), "--init", str(tiny_model), "--recipe",
        str(tmp_path / "recipe.toml"), "--time-budget", "0.1", "--batch-size", "2", "--workers", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps and max(steps) > 5


def test_recipes_flags_and_schedule(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text("steps = 500\nbatch_size = 8\n")
    recipe = load_recipe(tmp_path / "r.toml", {"batch_size": 4, "seed": None})
    assert (recipe.steps, recipe.batch_size) == (500, 4)
    (tmp_path / "bad.toml").write_text("stepz = 3\n")
    with pytest.raises(UsageError, match="unknown keys stepz"):
        load_recipe(tmp_path / "bad.toml", {})
    with pytest.raises(UsageError, match="give steps or a time budget"):
        load_recipe(None, {"steps": 0})
    schedule = Recipe(learning_rate=1.0, milestones=[0.5], gamma=0.1)
    assert learning_rate_at(schedule, 49, 100) == 1.0 and learning_rate_at(schedule, 50, 100) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('batch_size = "8"', "batch_size must be an integer, got '8'"),
        ("seed = 1.5", "seed must be an integer, got 1.5"),
        (f"seed = {2**64}", f"seed must be an integer from 0 to {2**64 - 1}"),
        ("finetune = 1", "finetune must be true or false, got 1"),
        ('milestones = [0.5, "x"]', "milestones must be a list of numbers"),
        ("arch = 3", "arch must be text, got 3"),
    ],
)
def test_a_recipe_value_of_the_wrong_type_is_one_line(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, line: str, message: str
) -> None:
    (tmp_path / "bad.toml").write_text(f"steps = 3\n{line}\n")
    result = run_cli(
        "train", "flow", str(photos), "--out", str(tmp_path / "out"), "--recipe", str(tmp_path / "bad.toml")
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_numbers_in_a_recipe_take_their_fields_type() -> None:
    recipe = load_recipe(None, {"learning_rate": 1, "milestones": [1 / 2], "time_budget": 5})
    assert isinstance(recipe.learning_rate, float) and isinstance(recipe.time_budget, float)
    assert recipe.milestones == [0.5]


def test_torchrun_with_gloo_on_two_processes(tmp_path: Path, photos: Path, tiny_model: Path) -> None:
    (tmp_path / "recipe.toml").write_text(RECIPE)
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "flowsr_cli", "train", "flow",
            str(photos), "--out", str(out), "--init", str(tiny_model), "--recipe", str(tmp_path / "recipe.toml"),
            "--steps", "6", "--batch-size", "2", "--workers", "0",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(path.name for path in out.iterdir()) == [
        "checkpoint.safetensors", "log.jsonl", "model.safetensors", "recipe.toml"
    ]  # fmt: skip
    assert len(losses(out / "log.jsonl")) == 6, "only rank 0 logs"
    assert result.stdout.count("model:") == 1


PRIOR_RECIPE = (
    "lr_size = 24\nscale_min = 2.0\nscale_max = 2.0\nlearning_rate = 0.002\nlog_every = 1\n"
    "val_every = 10\nval_images = 1\nval_scale = 2.0\n"
)


def test_train_prior_lowers_the_loss_and_the_model_upscales_deterministically(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    (tmp_path / "recipe.toml").write_text(PRIOR_RECIPE)
    out = tmp_path / "prior"
    (tmp_path / "val").mkdir()
    PILImage.open(sorted(photos.rglob("*.jpg"))[1]).crop((0, 0, 48, 36)).save(tmp_path / "val" / "v.png")
    result = run_cli(
        "train", "prior", str(photos), "--flow", str(tiny_model), "--out", str(out), "--recipe",
        str(tmp_path / "recipe.toml"), "--steps", "30", "--batch-size", "4", "--workers", "0",
        "--val", str(tmp_path / "val"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    values = losses(out / "log.jsonl", "vgg")
    assert len(values) == 30 and sum(values[-5:]) < 0.8 * sum(values[:5]), values
    assert len(losses(out / "log.jsonl", "validation")) == 3, "training goes on after each validation"

    exported = load_model(out / "model.safetensors")
    frozen = load_model(tiny_model)
    assert exported.spec["name"] == "linf-lp"
    assert all(torch.equal(value, exported.flow.state_dict()[name]) for name, value in frozen.state_dict().items())

    PILImage.open(sorted(photos.rglob("*.jpg"))[0]).crop((0, 0, 40, 30)).save(tmp_path / "x.png")
    model = str(out / "model.safetensors")
    for name, extra in (("a.png", []), ("b.png", ["--seed", "9", "--temperature", "0.9"])):
        upscaled = run_cli(
            "upscale", str(tmp_path / "x.png"), "-s", "2", "--model", model, "-o", str(tmp_path / name), *extra
        )
        assert upscaled.exit_code == 0, upscaled.output
    first, second = (np.asarray(PILImage.open(tmp_path / name)) for name in ("a.png", "b.png"))
    assert first.shape == (60, 80, 3) and np.array_equal(first, second), "the learned prior is deterministic"
    gaussian = run_cli(
        "upscale", str(tmp_path / "x.png"), "-s", "2", "--model", model, "--prior", "gaussian",
        "-o", str(tmp_path / "c.png"),
    )  # fmt: skip
    assert gaussian.exit_code == 0 and not np.array_equal(np.asarray(PILImage.open(tmp_path / "c.png")), first)

    evaluated = run_cli(
        "eval", str(SHARED / "data/eval/Set5"), "--model", model, "--scales", "2", "--max-images", "1",
        "--json", str(tmp_path / "e.json"),
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    priors = [row["prior"] for row in json.loads((tmp_path / "e.json").read_text())["results"]]
    assert priors == ["bicubic", "learned"]


def test_finetune_alternates_nll_and_l1_steps(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_model: Path
) -> None:
    (tmp_path / "recipe.toml").write_text(RECIPE)
    out = tmp_path / "ft"
    result = run_cli(
        "train", "flow", str(photos), "--out", str(out), "--init", str(tiny_model), "--recipe",
        str(tmp_path / "recipe.toml"), "--steps", "6", "--batch-size", "2", "--workers", "0", "--finetune",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [("nll" in record, "l1" in record) for record in records] == [(True, False), (False, True)] * 3
    nll_record = records[0]
    assert nll_record["loss"] == pytest.approx(5e-4 * nll_record["nll"], rel=1e-5)


def tiny_prior(monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """A tiny LINF-LP in training mode, with VGG16 findable for its perceptual loss."""
    from flowsr_cli.families.registry import make

    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    torch.manual_seed(0)
    latent = {"name": "lp-latent", "args": {"branch_channels": 8, "growth": 8, "widths": [8, 16]}}
    return make({"name": "linf-lp", "args": {"flow": tiny_linf(3).spec, "latent": latent}}).train()


def test_prior_objective_adds_the_latent_term(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowsr_cli.train.objectives import PriorObjective
    from flowsr_cli.train.perceptual import VGGPerceptualLoss

    model = tiny_prior(monkeypatch)
    perceptual = VGGPerceptualLoss(torch.device("cpu"))
    lr, hr = torch.rand(2, 3, 12, 12) * 2 - 1, torch.rand(2, 3, 24, 24) * 2 - 1
    generator = torch.Generator()
    plain = PriorObjective(model, perceptual, 1.0, 0.0)(lr, hr, 0, generator)
    with_latent = PriorObjective(model, perceptual, 1.0, 0.1)(lr, hr, 0, generator)
    assert "latent" not in plain and with_latent["latent"] > 0
    assert with_latent["loss"].item() == pytest.approx((with_latent["vgg"] + 0.1 * with_latent["latent"]).item())


def test_prior_objective_minimises_the_texture_term_when_weighted(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowsr_cli.train.objectives import PriorObjective
    from flowsr_cli.train.perceptual import VGGPerceptualLoss

    model = tiny_prior(monkeypatch)
    objective = PriorObjective(model, VGGPerceptualLoss(torch.device("cpu"), texture_weight=3.0), 1.0, 0.0)
    lr, hr = torch.rand(2, 3, 12, 12) * 2 - 1, torch.rand(2, 3, 24, 24) * 2 - 1
    losses = objective(lr, hr, 0, torch.Generator())
    assert losses["texture"] > 0
    assert losses["loss"].item() == pytest.approx((losses["vgg"] + 3.0 * losses["texture"]).item())
    losses["loss"].backward()
    assert all(parameter.grad is None for parameter in model.flow.parameters())
    assert any(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in model.latent.parameters())


def test_prior_objective_adds_the_detail_and_grid_terms_when_weighted(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowsr_cli.families.linf.network import LINF
    from flowsr_cli.train.detail import detail_loss, grid_loss
    from flowsr_cli.train.objectives import PriorObjective
    from flowsr_cli.train.perceptual import VGGPerceptualLoss

    model = tiny_prior(monkeypatch)
    perceptual = VGGPerceptualLoss(torch.device("cpu"))
    lr, hr = torch.rand(2, 3, 12, 12) * 2 - 1, torch.rand(2, 3, 24, 24) * 2 - 1
    plain = PriorObjective(model, perceptual, 1.0, 0.0)(lr, hr, 0, torch.Generator())
    objective = PriorObjective(model, perceptual, 1.0, 0.0, detail_weight=20.0, grid_weight=30.0)
    losses = objective(lr, hr, 0, torch.Generator())
    assert "detail" not in plain and "grid" not in plain
    with torch.no_grad():
        features = model.encode(lr)
        output = model.render(features, (24, 24))
        base = LINF.bilinear_base(features, (24, 24), range(24), range(24))
        assert losses["detail"].item() == pytest.approx(detail_loss(output, hr, base).item(), rel=1e-4)
        assert losses["grid"].item() == pytest.approx(grid_loss(output, hr, base, 3).item(), rel=1e-4)
    assert losses["detail"] > 0 and losses["grid"] > 0
    expected = losses["vgg"] + 20.0 * losses["detail"] + 30.0 * losses["grid"]
    assert losses["loss"].item() == pytest.approx(expected.item())
    losses["loss"].backward()
    assert all(parameter.grad is None for parameter in model.flow.parameters())
    assert any(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in model.latent.parameters())


def test_a_time_budget_alone_is_not_capped_by_the_default_step_count(tmp_path: Path) -> None:
    assert load_recipe(None, {}).steps == 1000
    assert load_recipe(None, {"time_budget": 30.0}).steps == 0
    assert load_recipe(None, {"time_budget": 30.0, "steps": 300}).steps == 300
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text("time_budget = 30.0\n")
    assert load_recipe(recipe_file, {}).steps == 0


def test_train_prior_continues_the_prior_of_a_flow_plus_prior_model(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    (tmp_path / "recipe.toml").write_text(PRIOR_RECIPE)
    out = tmp_path / "more"
    common = ("--out", str(out), "--recipe", str(tmp_path / "recipe.toml"), "--batch-size", "2", "--workers", "0")
    result = run_cli("train", "prior", str(photos), "--flow", "linf-lp", "--steps", "2", *common)
    assert result.exit_code == 0, result.output
    assert 'arch = "lp-small"' in (out / "recipe.toml").read_text()

    shipped, continued = load_model(Hub(Settings()).resolve("linf-lp")), load_model(out / "model.safetensors")
    assert continued.spec == shipped.spec
    assert all(
        torch.equal(value, continued.flow.state_dict()[name]) for name, value in shipped.flow.state_dict().items()
    )
    continued_parameters = dict(continued.latent.named_parameters())
    changes = [
        (value - continued_parameters[name]).abs().max().item() for name, value in shipped.latent.named_parameters()
    ]
    assert 0 < max(changes) < 0.01, "two small steps on from the shipped prior, not a fresh one"

    refused = run_cli("train", "prior", str(photos), "--flow", "linf-lp", "--arch", "lp", "--steps", "1", *common)
    assert refused.exit_code == 2 and "lp-small" in refused.output


@pytest.mark.parametrize(("scale_max", "kept"), [(4.0, True), (6.0, False)])
def test_continuing_a_prior_past_its_fade_drops_the_fade(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch, scale_max: float, kept: bool
) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    shipped = load_model(Hub(Settings()).resolve("linf-lp"))
    assert isinstance(shipped, LINFLP)
    save_model(shipped.with_fade(LatentFade(4.0, 3.0)), tmp_path / "faded.safetensors")
    recipe = PRIOR_RECIPE.replace("scale_max = 2.0", f"scale_max = {scale_max}")
    (tmp_path / "recipe.toml").write_text(recipe.replace("lr_size = 24", "lr_size = 12"))
    out = tmp_path / "more"
    result = run_cli(
        "train", "prior", str(photos), "--flow", str(tmp_path / "faded.safetensors"), "--steps", "1",
        "--out", str(out), "--recipe", str(tmp_path / "recipe.toml"), "--batch-size", "1", "--workers", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    continued = load_model(out / "model.safetensors")
    assert (continued.fade is not None) == kept
    assert ("fade beyond x4 is dropped" in result.output) == (not kept)


class ParameterNorm(torch.nn.Module):
    """A stand-in objective whose loss needs no data: the squared norm of the model's parameters."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor, hr: torch.Tensor, step: int, generator: torch.Generator) -> dict:
        return {"loss": sum(parameter.pow(2).sum() for parameter in self.model.parameters())}


def test_a_time_budget_refits_the_step_count_when_early_steps_were_slow(tmp_path: Path) -> None:
    """The first steps are timed while the machine is busy (0.4 s each); later steps take milliseconds (up to
    ~0.1 s on a loaded machine). Fitting the step count once, from the slow steps, would stop the 12 s run
    after about 30 steps."""
    model = tiny_linf()

    def batches(start: int):  # type: ignore[no-untyped-def]
        from flowsr_cli.train.data import Batch

        step = start
        while True:
            if step < 13:
                time.sleep(0.4)
            yield Batch(lr=torch.zeros(1, 3, 2, 2), hr=torch.zeros(1, 3, 2, 2), scale=1.0, step=step)
            step += 1

    recipe = Recipe(steps=0, time_budget=0.2, log_every=1, checkpoint_every=10**6, milestones=[0.9])
    trainer = Trainer(
        model, ParameterNorm(model), recipe, batches, RunFiles(tmp_path), Cluster(), torch.device("cpu"),
        show_progress=False,
    )  # fmt: skip
    started = time.monotonic()
    trainer.run()
    assert time.monotonic() - started < 16
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert max(steps) > 45


def test_a_resume_under_a_time_budget_keeps_the_checkpoints_rate_until_the_budget_is_fitted(tmp_path: Path) -> None:
    """A first leg of 20 steps halves the rate at step 10; a resume for a few seconds times its first 13 steps
    before fitting its own schedule, and those steps keep the halved rate, not the recipe's base rate."""
    model = tiny_linf()

    def batches(start: int):  # type: ignore[no-untyped-def]
        from flowsr_cli.train.data import Batch

        step = start
        while True:
            yield Batch(lr=torch.zeros(1, 3, 2, 2), hr=torch.zeros(1, 3, 2, 2), scale=1.0, step=step)
            step += 1

    def trainer(recipe: Recipe) -> Trainer:
        return Trainer(
            model, ParameterNorm(model), recipe, batches, RunFiles(tmp_path), Cluster(), torch.device("cpu"),
            show_progress=False,
        )  # fmt: skip

    first = Recipe(steps=20, learning_rate=1e-2, milestones=[0.5], gamma=0.5, log_every=1, checkpoint_every=10**6)
    trainer(first).run()
    leg = Recipe(steps=0, time_budget=0.1, learning_rate=1e-2, milestones=[0.5], gamma=0.5, log_every=1)
    trainer(leg).run(resume=tmp_path / "checkpoint.safetensors")
    records = map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())
    rates = {record["step"]: record["lr"] for record in records}
    assert rates[20] == 5e-3 and rates[21] == 5e-3 and rates[33] == 5e-3  # the timing steps: the first leg's last rate
    assert max(rates) > 40 and rates[max(rates)] == 5e-3 and 1e-2 in {rates[step] for step in range(34, 40)}


def _validation_folder(tmp_path: Path, photos: Path, good: bool) -> Path:
    folder = tmp_path / "val"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    PILImage.new("RGB", (4, 4), "grey").save(folder / "speck.png")
    if good:
        PILImage.open(sorted(photos.rglob("*.jpg"))[1]).crop((0, 0, 48, 36)).save(folder / "view.png")
    return folder


def test_validation_names_the_images_it_cannot_score_and_trains_on(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_model: Path
) -> None:
    recipe = RECIPE.replace("val_images = 1\n", "val_images = 3\nval_every = 1\nval_scale = 2.0\n")
    (tmp_path / "recipe.toml").write_text(recipe)
    out = tmp_path / "run"
    result = run_cli(
        "train", "flow", str(photos), "--out", str(out), "--init", str(tiny_model), "--recipe",
        str(tmp_path / "recipe.toml"), "--steps", "2", "--batch-size", "2", "--workers", "0",
        "--val", str(_validation_folder(tmp_path, photos, good=True)),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: --val")]
    assert len(warnings) == 2 and "broken.png" in warnings[0] and "speck.png: 4×4 is too small" in warnings[1]
    assert len(losses(out / "log.jsonl", "validation")) == 2


def test_a_validation_folder_with_nothing_to_score_stops_before_training(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_model: Path
) -> None:
    (tmp_path / "recipe.toml").write_text(RECIPE.replace("val_images = 1\n", "val_images = 3\n"))
    out = tmp_path / "run"
    result = run_cli(
        "train", "flow", str(photos), "--out", str(out), "--init", str(tiny_model), "--recipe",
        str(tmp_path / "recipe.toml"), "--steps", "2", "--workers", "0",
        "--val", str(_validation_folder(tmp_path, photos, good=False)),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "no image can be scored" in result.stderr and "(1 unreadable, 1 too small)" in result.stderr
    assert not (out / "log.jsonl").exists()


def _train_flow(run_cli: CliInvoker, photos: Path, out: Path, model: Path, recipe: Path, *extra: str) -> Result:
    return run_cli(
        "train", "flow", str(photos), "--out", str(out), "--init", str(model), "--recipe", str(recipe),
        "--batch-size", "2", "--workers", "0", *extra,
    )  # fmt: skip


def _one_line(text: str) -> str:
    """Help or messages with Rich's box lines and wrapping taken out."""
    return " ".join(text.replace("│", " ").split())


def test_steps_on_resume_is_the_runs_total_and_each_resume_says_where_it_stands(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_model: Path
) -> None:
    (tmp_path / "recipe.toml").write_text(RECIPE)
    out = tmp_path / "run"
    first = _train_flow(run_cli, photos, out, tiny_model, tmp_path / "recipe.toml", "--steps", "3")
    assert first.exit_code == 0, first.output
    checkpoint = str(out / "checkpoint.safetensors")

    longer = _train_flow(run_cli, photos, out, tiny_model, tmp_path / "recipe.toml", "--resume", checkpoint,
                         "--steps", "5")  # fmt: skip
    assert longer.exit_code == 0, longer.output
    assert "resuming at step 3 of 5" in longer.stderr
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]

    again = _train_flow(run_cli, photos, out, tiny_model, tmp_path / "recipe.toml", "--resume", checkpoint)
    assert again.exit_code == 0, again.output
    (line,) = [line for line in again.stderr.splitlines() if "nothing to train" in line]
    assert "step 5 of 5" in line and "--steps" in line
    assert len((out / "log.jsonl").read_text().splitlines()) == 5 and (out / "model.safetensors").is_file()

    fewer = _train_flow(run_cli, photos, out, tiny_model, tmp_path / "recipe.toml", "--resume", checkpoint,
                        "--steps", "4")  # fmt: skip
    assert fewer.exit_code == 2, fewer.output
    errors = [line for line in fewer.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "steps 4" in errors[0] and "step 5" in errors[0] and checkpoint in errors[0]
    assert "Traceback" not in fewer.output and "unexpected" not in fewer.output


def test_a_run_shorter_than_log_every_and_val_every_still_logs_and_validates_its_last_step(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_model: Path
) -> None:
    (tmp_path / "recipe.toml").write_text("lr_size = 24\nqueries = 256\nval_images = 1\nval_scale = 2.0\n")
    (tmp_path / "val").mkdir()
    PILImage.open(sorted(photos.rglob("*.jpg"))[1]).crop((0, 0, 48, 36)).save(tmp_path / "val" / "v.png")
    out = tmp_path / "run"
    result = _train_flow(run_cli, photos, out, tiny_model, tmp_path / "recipe.toml", "--steps", "3",
                         "--val", str(tmp_path / "val"))  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == [3]
    (validation,) = [record for record in records if "validation" in record]
    assert validation["step"] == 3 and validation["validation"]["psnr_y"] > 10
    # Unprojected, this 3-step model's output is at 17.7 dB; it saturates, so projected it reaches about 35 dB.
    assert validation["validation"]["lr_psnr"] > 30, "validated as upscale runs the model: projected (auto)"
    stderr = _one_line(result.stderr)
    assert "after the last step (consistency on)" in stderr, "says when validation runs, and how"
    assert "validation at step 3: PSNR-Y" in stderr


@pytest.mark.parametrize("stage", ["flow", "prior"])
def test_train_help_shows_the_recipe_defaults_and_examples(run_cli: CliInvoker, stage: str) -> None:
    result = run_cli("train", stage, "--help")
    assert result.exit_code == 0, result.output
    text = _one_line(result.output)
    for value in ("1000", "0, off", "16", "0.0001", "2"):  # steps, time budget, batch size, lr, workers
        assert f"[default: (recipe: {value})]" in text, text
    assert ("linf-small" if stage == "flow" else "lp-small") in text.split("Examples")[0]
    examples = text.split("Examples", 1)[1]
    assert 2 <= examples.count(f"flowsr train {stage} ") <= 4, examples
