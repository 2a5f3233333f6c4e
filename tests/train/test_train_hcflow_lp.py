"""`flowsr train prior` on an HCFlow flow (HCFlow-LP): real tiny runs through the CLI, the loss going down, resume,
continuing a trained prior, and usage errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flowsr_cli.families.hcflow.prior import HCFlowLP
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.train.objectives import HCFlowPriorObjective, prior_objective
from flowsr_cli.train.recipe import PRIORS, load_recipe
from tests.conftest import REPO_ROOT, SHARED, CliInvoker
from tests.families.hcflow.test_hcflow import TINY, tiny_model
from tests.families.hcflow.test_hcflow_lp import tiny_hcflow_lp
from tests.train.test_train_srflow import RECIPE as SRFLOW_RECIPE
from tests.train.test_train_srflow import records

RECIPE = SRFLOW_RECIPE
"""What the ``recipe`` fixture writes: SRFlow's small test recipe."""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))


@pytest.fixture
def tiny_flow(tmp_path: Path) -> Path:
    save_model(tiny_model(TINY), tmp_path / "tiny.safetensors")
    return tmp_path / "tiny.safetensors"


def train_prior(run_cli: CliInvoker, photos: Path, flow: Path, out: Path, *options: str) -> None:
    result = run_cli("train", "prior", str(photos), "--flow", str(flow), "--out", str(out), *options)
    assert result.exit_code == 0, result.output
    assert "upscale IMAGE -s 4 --model" in result.output


def test_train_prior_on_an_hcflow_exports_a_loadable_hcflow_lp_and_resumes(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, recipe: Path, val: Path, tiny_flow: Path
) -> None:
    out = tmp_path / "prior"
    train_prior(run_cli, photos, tiny_flow, out, "--recipe", str(recipe), "--steps", "3", "--val", str(val))
    model = load_model(out / "model.safetensors")
    assert isinstance(model, HCFlowLP) and model.spec["args"]["latent"] == PRIORS["hcflow-lp-small"]["latent"]
    flow = load_model(tiny_flow)
    assert all(torch.equal(value, model.flow.state_dict()[name]) for name, value in flow.state_dict().items())
    logged = records(out / "log.jsonl", "latent")
    assert [record["step"] for record in logged] == [1, 2, 3]
    keys = ("loss", "vgg", "latent", "l1")
    assert all(math.isfinite(float(record[key])) for record in logged for key in keys), logged  # type: ignore[arg-type]
    (validation,) = [record["validation"] for record in records(out / "log.jsonl", "validation")]
    assert validation["psnr_y"] > 5 and validation["inf_rate"] == 0  # type: ignore[index]
    saved = load_recipe(out / "recipe.toml", {})
    assert (saved.arch, saved.latent_weight, saved.scale_min, saved.scale_max) == ("hcflow-lp-small", 0.1, 4.0, 4.0)

    checkpoint = str(out / "checkpoint.safetensors")
    train_prior(run_cli, photos, tiny_flow, out, "--recipe", str(recipe), "--resume", checkpoint, "--steps", "5")
    assert [record["step"] for record in records(out / "log.jsonl", "latent")] == [1, 2, 3, 4, 5]
    resumed = load_model(out / "model.safetensors")
    assert isinstance(resumed, HCFlowLP)
    assert any(not torch.equal(a, b) for a, b in zip(resumed.priors.parameters(), model.priors.parameters()))


def test_a_trained_hcflow_lp_continues_training_its_prior(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, recipe: Path
) -> None:
    start = tiny_hcflow_lp()
    save_model(make_small(start), tmp_path / "lp.safetensors")
    more = tmp_path / "more"
    train_prior(run_cli, photos, tmp_path / "lp.safetensors", more, "--recipe", str(recipe), "--steps", "2")
    continued = load_model(more / "model.safetensors")
    before = load_model(tmp_path / "lp.safetensors")
    assert isinstance(continued, HCFlowLP) and continued.spec == before.spec
    assert load_recipe(more / "recipe.toml", {}).arch == "hcflow-lp-small"
    frozen = continued.flow.state_dict()
    assert all(torch.equal(value, frozen[name]) for name, value in before.flow.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(continued.priors.parameters(), before.priors.parameters()))


def make_small(model: HCFlowLP) -> HCFlowLP:
    """``model``'s flow under an ``hcflow-lp-small`` prior, the size a recipe names (so its training can continue)."""
    from flowsr_cli.families.registry import make

    latent = PRIORS["hcflow-lp-small"]["latent"]
    small = make({"name": "hcflow-lp", "args": {"flow": model.flow.spec, "latent": latent}})
    assert isinstance(small, HCFlowLP)
    small.flow.load_state_dict(model.flow.state_dict())
    return small


def test_prior_steps_lower_the_loss_on_a_fixed_batch() -> None:
    model = tiny_hcflow_lp()
    objective = prior_objective(model, load_recipe(None, {"arch": "hcflow-lp-small", "steps": 1}), torch.device("cpu"))
    assert isinstance(objective, HCFlowPriorObjective) and model.training and not model.flow.training
    optimiser = torch.optim.Adam([parameter for parameter in objective.parameters() if parameter.requires_grad], 3e-3)
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
    lr = F.avg_pool2d(hr, 4)
    losses = []
    for step in range(12):
        result = objective(lr, hr, step, torch.Generator())
        optimiser.zero_grad()
        result["loss"].backward()
        optimiser.step()
        losses.append(result["loss"].item())
    assert set(result) == {"vgg", "perceptual", "l1", "latent", "loss"}
    assert result["loss"].item() == pytest.approx((result["vgg"] + 0.1 * result["latent"]).item())
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["--flow", "{notes}"], "notes.safetensors: not a readable .safetensors file"),
        (["--flow", "{flow}", "--arch", "srflow-lp-small"], "hcflow-lp, hcflow-lp-small"),
        (["--flow", "{flow}", "--recipe", "{scales}"], "trains at x4 only"),
        (["--flow", "{flow}", "--recipe", "{detail}"], "are for LINF priors"),
    ],
)
def test_hcflow_prior_usage_errors_exit_2(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_flow: Path, command: list[str], message: str
) -> None:
    (tmp_path / "notes.safetensors").write_text("not a model")
    (tmp_path / "scales.toml").write_text("scale_min = 2.0\n")
    (tmp_path / "detail.toml").write_text("detail_weight = 0.5\n")
    paths = {
        "{notes}": str(tmp_path / "notes.safetensors"),
        "{flow}": str(tiny_flow),
        "{scales}": str(tmp_path / "scales.toml"),
        "{detail}": str(tmp_path / "detail.toml"),
    }
    args = [paths.get(arg, arg) for arg in command]
    result = run_cli("train", "prior", str(photos), "--out", str(tmp_path / "out"), "--steps", "1", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_the_recipe_file_is_cpu_sized_and_valid() -> None:
    loaded = load_recipe(REPO_ROOT / "scripts/recipes/hcflow-lp.toml", {})
    assert (loaded.arch, loaded.lr_size, loaded.time_budget, loaded.latent_weight) == ("hcflow-lp-small", 24, 45.0, 0.1)
    assert loaded.scale_min == loaded.scale_max == loaded.val_scale == 4.0
