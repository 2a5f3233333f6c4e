"""`flowsr train` for SRFlow and SRFlow-LP: real tiny runs through the CLI, resume, and x4-only recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowsr_cli.families.common.flow_layers import ActNorm
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.families.registry import make
from flowsr_cli.families.srflow.network import SRFlow
from flowsr_cli.families.srflow.prior import SRFlowLP
from flowsr_cli.train.data import BatchStream, CropRecipe, TrainingImages, find_training_images
from flowsr_cli.train.distributed import Cluster
from flowsr_cli.train.loop import RunFiles, Trainer
from flowsr_cli.train.objectives import SRFlowObjective
from flowsr_cli.train.recipe import ARCHITECTURES, load_recipe
from tests.conftest import SHARED, CliInvoker
from tests.families.srflow.test_srflow_lp import TINY_FLOW

RECIPE = (
    "lr_size = 8\nbatch_size = 2\nworkers = 0\nlearning_rate = 0.001\nlog_every = 1\n"
    "checkpoint_every = 3\nval_every = 3\nval_images = 1\n"
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_flow(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    save_model(make(TINY_FLOW), tmp_path / "tiny.safetensors")
    return tmp_path / "tiny.safetensors"


def records(log: Path, key: str) -> list[dict[str, object]]:
    return [record for line in log.read_text().splitlines() if key in (record := json.loads(line))]


def test_train_flow_then_prior_exports_loadable_srflow_models(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, recipe: Path, val: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    flow_out, prior_out = tmp_path / "flow", tmp_path / "prior"
    common = ["--recipe", str(recipe), "--steps", "3", "--val", str(val)]
    trained = run_cli("train", "flow", str(photos), "--arch", "srflow-small", "--out", str(flow_out), *common)
    assert trained.exit_code == 0, trained.output
    assert "upscale IMAGE -s 4 --model" in trained.output
    flow = load_model(flow_out / "model.safetensors")
    assert isinstance(flow, SRFlow) and flow.spec == ARCHITECTURES["srflow-small"]
    assert all(bool(layer.initialized) for layer in flow.modules() if isinstance(layer, ActNorm))
    nlls = [record["nll"] for record in records(flow_out / "log.jsonl", "nll")]
    assert len(nlls) == 3 and all(0 < float(nll) < 100 for nll in nlls), nlls  # type: ignore[arg-type]
    (validation,) = [record["validation"] for record in records(flow_out / "log.jsonl", "validation")]
    assert validation["psnr_y"] > 5  # type: ignore[index]
    saved = load_recipe(flow_out / "recipe.toml", {})
    assert (saved.arch, saved.scale_min, saved.scale_max, saved.val_scale) == ("srflow-small", 4.0, 4.0, 4.0)

    prior = run_cli("train", "prior", str(photos), "--flow", str(flow_out / "model.safetensors"),
                    "--out", str(prior_out), *common)  # fmt: skip
    assert prior.exit_code == 0, prior.output
    model = load_model(prior_out / "model.safetensors")
    assert isinstance(model, SRFlowLP)
    assert all(torch.equal(value, model.flow.state_dict()[name]) for name, value in flow.state_dict().items())
    assert len(records(prior_out / "log.jsonl", "latent")) == 3
    assert len(records(prior_out / "log.jsonl", "validation")) == 1
    saved = load_recipe(prior_out / "recipe.toml", {})
    assert (saved.arch, saved.latent_weight, saved.scale_min) == ("srflow-lp-small", 0.1, 4.0)


def test_torchrun_trains_srflow_and_its_prior_on_two_processes(
    tmp_path: Path, photos: Path, recipe: Path, val: Path
) -> None:
    """DDP with gloo: a fresh SRFlow (the data-dependent ActNorm start and its broadcast run under DDP),
    then its learned prior on the frozen flow; one set of files and one log, from rank 0. (Whether the
    ranks hold equal weights is not visible from here: only rank 0 writes.)"""
    torchrun = Path(sys.executable).with_name("torchrun")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "FLOWSR_BACKBONE_DIR": str(SHARED / "weights")}
    flow_out, prior_out = tmp_path / "flow", tmp_path / "prior"
    runs = [
        ["flow", str(photos), "--arch", "srflow-small", "--out", str(flow_out)],
        ["prior", str(photos), "--flow", str(flow_out / "model.safetensors"), "--out", str(prior_out)],
    ]
    for port, run in zip((29531, 29532), runs):
        result = subprocess.run(
            [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "flowsr_cli", "train", *run,
             "--recipe", str(recipe), "--steps", "3", "--val", str(val)],
            capture_output=True, text=True, env=environment, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.count("model:") == 1
    flow = load_model(flow_out / "model.safetensors")
    assert isinstance(flow, SRFlow)
    assert all(bool(layer.initialized) for layer in flow.modules() if isinstance(layer, ActNorm))
    assert len(records(flow_out / "log.jsonl", "nll")) == 3, "only rank 0 logs"
    model = load_model(prior_out / "model.safetensors")
    assert isinstance(model, SRFlowLP)
    assert all(torch.equal(value, model.flow.state_dict()[name]) for name, value in flow.state_dict().items())
    assert len(records(prior_out / "log.jsonl", "latent")) == 3


def srflow_trainer(photos: Path, out: Path, interrupt_after: int | None = None) -> Trainer:
    torch.manual_seed(0)
    model = make(TINY_FLOW).train()
    recipe = load_recipe(None, {"arch": "srflow-small", "lr_size": 8, "learning_rate": 2e-3, "steps": 6,
                                "batch_size": 2, "log_every": 1})  # fmt: skip
    crop = CropRecipe(recipe.lr_size, recipe.scale_min, recipe.scale_max, multiple=4)
    images = TrainingImages(find_training_images([photos]), crop)

    def batches(start: int):  # type: ignore[no-untyped-def]
        for index, batch in enumerate(BatchStream(images, crop, recipe.batch_size, recipe.seed, start)):
            if interrupt_after is not None and index == interrupt_after:
                raise KeyboardInterrupt
            yield batch

    objective = SRFlowObjective(model)
    return Trainer(
        model, objective, recipe, batches, RunFiles(out), Cluster(), torch.device("cpu"), show_progress=False
    )


def test_interrupt_and_resume_gives_the_same_srflow(tmp_path: Path, photos: Path) -> None:
    straight = srflow_trainer(photos, tmp_path / "straight")
    straight.run()
    interrupted = srflow_trainer(photos, tmp_path / "halves", interrupt_after=3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = srflow_trainer(photos, tmp_path / "halves")
    resumed.run(resume=tmp_path / "halves" / "checkpoint.safetensors")
    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(expected[name], actual[name], atol=1e-6) for name in expected)
    assert len(records(tmp_path / "halves" / "log.jsonl", "nll")) == 6


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["flow", "--arch", "srflow-small", "--recipe", "{scales}"], "trains at x4 only"),
        (["flow", "--arch", "srflow-small", "--finetune"], "LINF's stage 2"),
        (["flow", "--init", "{flow}", "--arch", "linf-small"], "not a srflow flow"),
        (["prior", "--flow", "{flow}", "--arch", "lp-small"], "srflow-lp, srflow-lp-small"),
    ],
)
def test_srflow_usage_errors_exit_2(
    run_cli: CliInvoker, tmp_path: Path, photos: Path, tiny_flow: Path, command: list[str], message: str
) -> None:
    (tmp_path / "scales.toml").write_text("scale_min = 2.0\n")
    paths = {"{scales}": str(tmp_path / "scales.toml"), "{flow}": str(tiny_flow)}
    args = [paths.get(arg, arg) for arg in command]
    result = run_cli("train", args[0], str(photos), "--out", str(tmp_path / "out"), "--steps", "1", *args[1:])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
