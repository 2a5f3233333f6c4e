"""`flowsr train flow` for HCFlow: real tiny runs through the CLI, the NLL going down, resume, HCFlow+ (--finetune),
skipped non-finite steps, gradient clipping, DDP under torchrun and the recipes."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from flowsr_cli.errors import FlowsrError
from flowsr_cli.families.common.flow_layers import ActNorm
from flowsr_cli.families.hcflow.network import CPU_CONFIGS, HCFlowSR
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.families.registry import make
from flowsr_cli.train.data import Batch, BatchStream, CropRecipe, TrainingImages, find_training_images
from flowsr_cli.train.distributed import Cluster
from flowsr_cli.train.loop import RunFiles, Trainer
from flowsr_cli.train.objectives import HCFlowObjective, flow_objective
from flowsr_cli.train.recipe import ARCHITECTURES, Recipe, load_recipe
from tests.conftest import REPO_ROOT, CliInvoker
from tests.families.hcflow.test_hcflow import TINY

RECIPE = "lr_size = 8\nbatch_size = 2\nworkers = 0\nlearning_rate = 0.001\nlog_every = 1\ncheckpoint_every = 3\n"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    save_model(make({"name": "hcflow", "args": TINY}), tmp_path / "tiny.safetensors")
    return tmp_path / "tiny.safetensors"


def records(log: Path, key: str | None = None) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [record for record in lines if key is None or key in record]


def actnorms_initialised(model: torch.nn.Module) -> bool:
    return all(bool(layer.initialized) for layer in model.modules() if isinstance(layer, ActNorm))


def test_train_flow_hcflow_small_exports_a_loadable_model_with_the_original_recipe(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, recipe: Path
) -> None:
    out = tmp_path / "run"
    result = run_cli("train", "flow", str(photos), "--arch", "hcflow-small", "--out", str(out),
                     "--recipe", str(recipe), "--steps", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "upscale IMAGE -s 4 --model" in result.output
    model = load_model(out / "model.safetensors")
    assert isinstance(model, HCFlowSR) and model.spec == ARCHITECTURES["hcflow-small"]
    assert model.spec["name"] == "hcflow" and actnorms_initialised(model)
    steps = records(out / "log.jsonl", "nll")
    assert [record["step"] for record in steps] == [1, 2, 3]
    assert all(math.isfinite(record["nll"]) and 0 <= record["grad_norm"] for record in steps)  # type: ignore[arg-type]
    saved = load_recipe(out / "recipe.toml", {})
    assert (saved.scale_min, saved.scale_max, saved.val_scale, saved.adam_beta2) == (4.0, 4.0, 4.0, 0.99)
    assert (saved.grad_clip_value, saved.grad_clip_norm, saved.milestones) == (5.0, 100.0, [0.5, 0.75, 0.9, 0.95])


def hcflow_trainer(
    photos: Path, out: Path, steps: int, finetune: bool = False, interrupt_after: int | None = None, **values: object
) -> Trainer:
    """A Trainer of a fresh tiny HCFlow on 32x32 HR crops (batch 2), through the registry's objective."""
    torch.manual_seed(0)
    model = make({"name": "hcflow", "args": TINY})
    recipe = load_recipe(None, {"arch": "hcflow-small", "lr_size": 8, "batch_size": 2, "learning_rate": 2e-3,
                                "steps": steps, "log_every": 1, "finetune": finetune, **values})  # fmt: skip
    crop = CropRecipe(recipe.lr_size, recipe.scale_min, recipe.scale_max, multiple=4)
    images = TrainingImages(find_training_images([photos]), crop)

    def batches(start: int) -> Iterator[Batch]:
        for index, batch in enumerate(BatchStream(images, crop, recipe.batch_size, recipe.seed, start)):
            if interrupt_after is not None and index == interrupt_after:
                raise KeyboardInterrupt
            yield batch

    objective = flow_objective(model, recipe, torch.device("cpu"))
    assert isinstance(objective, HCFlowObjective)
    return Trainer(
        model, objective, recipe, batches, RunFiles(out), Cluster(), torch.device("cpu"), show_progress=False
    )


def test_the_nll_goes_down_and_gradients_are_clipped(tmp_path: Path, photos: Path) -> None:
    trainer = hcflow_trainer(photos, tmp_path / "run", 30)
    trainer.run()
    logged = records(tmp_path / "run" / "log.jsonl", "nll")
    nlls = [float(record["nll"]) for record in logged]  # type: ignore[arg-type]
    assert len(nlls) == 30 and sum(nlls[-5:]) < 0.5 * sum(nlls[:5]), nlls
    assert max(float(record["grad_norm"]) for record in logged) > 100, "the norm clipping had work to do"  # type: ignore[arg-type]
    gradients = [parameter.grad for parameter in trainer.model.parameters() if parameter.grad is not None]
    assert max(float(grad.abs().max()) for grad in gradients) <= 5.0
    assert float(torch.linalg.vector_norm(torch.stack([grad.norm() for grad in gradients]))) <= 100.0 * (1 + 1e-5)


def test_interrupt_and_resume_gives_the_same_hcflow(tmp_path: Path, photos: Path) -> None:
    straight = hcflow_trainer(photos, tmp_path / "straight", 6, finetune=True)
    straight.run()
    interrupted = hcflow_trainer(photos, tmp_path / "halves", 6, finetune=True, interrupt_after=3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = hcflow_trainer(photos, tmp_path / "halves", 6, finetune=True)
    resumed.run(resume=tmp_path / "halves" / "checkpoint.safetensors")
    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(expected[name], actual[name], atol=1e-6) for name in expected)
    assert [record["step"] for record in records(tmp_path / "halves" / "log.jsonl", "loss")] == [1, 2, 3, 4, 5, 6]


def test_finetune_alternates_weighted_nll_and_l1_steps_from_a_trained_model(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, recipe: Path, tiny_file: Path
) -> None:
    trained = run_cli("train", "flow", str(photos), "--init", str(tiny_file), "--out", str(tmp_path / "nll"),
                      "--recipe", str(recipe), "--steps", "1")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "ft"
    result = run_cli("train", "flow", str(photos), "--init", str(tmp_path / "nll" / "model.safetensors"),
                     "--out", str(out), "--recipe", str(recipe), "--steps", "4", "--finetune")  # fmt: skip
    assert result.exit_code == 0, result.output
    logged = records(out / "log.jsonl")
    assert [("nll" in record, "l1" in record) for record in logged] == [(True, False), (False, True)] * 2
    assert logged[0]["loss"] == pytest.approx(2e-3 * float(logged[0]["nll"]), rel=1e-5)  # type: ignore[arg-type]
    assert 0 < float(logged[1]["l1"]) < 1  # type: ignore[arg-type]
    model = load_model(out / "model.safetensors")
    assert isinstance(model, HCFlowSR) and model.spec == {"name": "hcflow", "args": TINY}
    assert load_recipe(out / "recipe.toml", {}).arch == "hcflow-small"


def test_the_l1_step_scores_the_clamped_heat_0_output() -> None:
    torch.manual_seed(0)
    model = make({"name": "hcflow", "args": TINY}).train()
    objective = HCFlowObjective(model, finetune=True)
    hr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    objective(lr, hr, 0, torch.Generator().manual_seed(2))
    assert actnorms_initialised(model)
    losses = objective(lr, hr, 1, torch.Generator().manual_seed(3))
    unit_lr, unit_hr = (lr + 1) / 2, (hr + 1) / 2
    expected = (model.sample(model.encode(unit_lr), 0.0).clamp(0, 1) - unit_hr).abs().mean()
    assert set(losses) == {"loss", "l1"} and torch.allclose(losses["loss"], expected)


def test_a_fresh_models_actnorms_start_from_the_first_steps_dequantised_batch() -> None:
    """As the original, whose ActNorms initialise inside the first training pass: the same noise as that step."""
    torch.manual_seed(0)
    model = make({"name": "hcflow", "args": TINY}).train()
    twin = make({"name": "hcflow", "args": TINY}).train()
    twin.load_state_dict(model.state_dict())
    hr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    nll = HCFlowObjective(model)(lr * 2 - 1, hr * 2 - 1, 0, torch.Generator().manual_seed(5))["nll"]
    assert nll == twin.nll_bits_per_pixel(hr, lr, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(value, twin.state_dict()[name]) for name, value in model.state_dict().items())


def test_a_non_finite_loss_or_gradient_skips_the_step_and_training_goes_on(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = hcflow_trainer(photos, tmp_path / "run", 5)
    model = trainer.model
    assert isinstance(model, HCFlowSR)
    nll = model.nll_bits_per_pixel
    calls = iter(range(100))

    def flaky(hr: torch.Tensor, lr: torch.Tensor, **kwargs: object) -> torch.Tensor:
        value = nll(hr, lr, **kwargs)  # type: ignore[arg-type]
        call = next(calls)  # call 0 initialises the actnorms; calls 1 to 5 are steps 1 to 5
        if call == 2:
            return value * float("inf")
        if call == 4:
            value.register_hook(lambda grad: grad * float("nan"))
        return value

    monkeypatch.setattr(model, "nll_bits_per_pixel", flaky)
    trainer.run()
    logged = records(tmp_path / "run" / "log.jsonl")
    skipped = {record["step"]: record["skipped"] for record in logged if "skipped" in record}
    assert skipped == {2: "non-finite loss", 4: "non-finite gradient"}
    assert [record["step"] for record in logged if "nll" in record] == [1, 3, 5]
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_endless_non_finite_losses_stop_training_with_a_clear_error(tmp_path: Path, photos: Path) -> None:
    trainer = hcflow_trainer(photos, tmp_path / "run", 100)
    with torch.no_grad():
        trainer.model.flow_levels[0].cond_flow.prior.bias.fill_(float("nan"))  # type: ignore[index, union-attr]
    with pytest.raises(FlowsrError, match="non-finite losses in a row"):
        trainer.run()
    assert len(records(tmp_path / "run" / "log.jsonl", "skipped")) == 21


def test_torchrun_trains_a_fresh_hcflow_with_finetune_steps_on_two_processes(
    tmp_path: Path, photos: Path, recipe: Path
) -> None:
    """DDP with gloo: the data-dependent ActNorm start (broadcast from rank 0) on step 1's NLL, then an HCFlow+
    L1 step through the inverse; one set of files and one log, from rank 0."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "run"
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29541", "-m", "flowsr_cli", "train", "flow",
         str(photos), "--arch", "hcflow-small", "--out", str(out), "--recipe", str(recipe), "--steps", "2",
         "--finetune"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("model:") == 1
    logged = records(out / "log.jsonl")
    assert [("nll" in record, "l1" in record) for record in logged] == [(True, False), (False, True)]
    assert actnorms_initialised(load_model(out / "model.safetensors"))


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["flow", "--arch", "hcflow-small", "--recipe", "{scales}"], "hcflow-small trains at x4 only"),
        (["flow", "--arch", "hcflow-tiny"], "--arch 'hcflow-tiny': choose one of"),
        (["flow", "--init", "{hcflow}", "--arch", "srflow-small"], "a hcflow model, but --arch srflow-small is not"),
        (["flow", "--arch", "srflow-small", "--finetune"], "LINF's stage 2 (linf) and HCFlow+ (hcflow)"),
        (["flow", "--arch", "hcflow-small", "--recipe", "{clip}"], "grad_clip_value and grad_clip_norm must be >= 0"),
        (["flow", "--arch", "hcflow-small", "--recipe", "{beta}"], "adam_beta2 must be in [0, 1)"),
        (["prior", "--flow", "{hcflow}", "--arch", "lp-small"], "for a hcflow flow choose one of hcflow-lp"),
    ],
)
def test_hcflow_usage_errors_are_one_line_and_exit_2(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_file: Path, command: list[str], message: str
) -> None:
    files = {"{scales}": "scale_min = 2.0\n", "{clip}": "grad_clip_norm = -1\n", "{beta}": "adam_beta2 = 1\n"}
    for name, text in files.items():
        (tmp_path / f"{name[1:-1]}.toml").write_text(text)
    paths = {name: str(tmp_path / f"{name[1:-1]}.toml") for name in files} | {"{hcflow}": str(tiny_file)}
    args = [paths.get(arg, arg) for arg in command]
    result = run_cli("train", args[0], str(photos), "--out", str(tmp_path / "out"), "--steps", "1", *args[1:])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_architectures_and_recipes() -> None:
    """hcflow is the paper's x4 network (the class defaults), hcflow-small is CPU_CONFIGS["k12"]; other families
    keep torch's Adam and no clipping; the recipe scripts load."""
    defaults = inspect.signature(HCFlowSR).parameters
    paper = ARCHITECTURES["hcflow"]["args"]
    assert paper.keys() == defaults.keys()
    assert all(paper[name] == (list(value.default) if isinstance(value.default, tuple) else value.default)
               for name, value in defaults.items())  # fmt: skip
    small = {"levels": 2, "hidden": 64, "cond_hidden": 64, "rrdb_channels": 64, **CPU_CONFIGS["k12"]}
    assert ARCHITECTURES["hcflow-small"]["args"] == small
    linf = load_recipe(None, {})
    assert (linf.adam_beta2, linf.grad_clip_value, linf.grad_clip_norm) == (0.999, 0.0, 0.0)
    assert (Recipe.adam_beta2, Recipe.grad_clip_value, Recipe.grad_clip_norm) == (0.999, 0.0, 0.0)
    flow = load_recipe(REPO_ROOT / "scripts/recipes/hcflow-flow.toml", {})
    finetune = load_recipe(REPO_ROOT / "scripts/recipes/hcflow-finetune.toml", {})
    assert (flow.arch, flow.finetune, flow.lr_size % 1, flow.grad_clip_norm) == ("hcflow-small", False, 0, 100.0)
    assert (finetune.arch, finetune.finetune, finetune.finetune_nll_weight) == ("hcflow-small", True, 2e-3)
