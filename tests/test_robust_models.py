"""Robustness: untrusted model specs, model files, original checkpoints and training checkpoints.

Every hostile file is written for real (safetensors, ``torch.save``, a real training run damaged
afterwards) and run through the real CLI: one ``error:`` line naming the file, exit 2, never the CLI's
"unexpected" fallback, and nothing large built first. Tests that could allocate without bound if the
checks regressed run under a real address-space limit, so a regression fails fast instead of
exhausting the machine.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner, Result

from flowsr_cli.cli import app
from flowsr_cli.engine.memory import available_memory
from flowsr_cli.families.importing import CheckpointImportError, convert_original
from flowsr_cli.families.model_file import ModelFileError, load_model, save_model
from flowsr_cli.families.registry import ModelSpecError, check_spec
from flowsr_cli.train.recipe import ARCHITECTURES, PRIORS
from tests.conftest import SHARED, CliInvoker
from tests.families.linf.test_linf import original_layout as original_linf
from tests.families.linf.test_linf import tiny_linf
from tests.families.srflow.test_import_srflow import TINY as TINY_SRFLOW
from tests.families.srflow.test_import_srflow import original_state as original_srflow
from tests.families.srflow.test_import_srflow import source_srflow

pytestmark = [pytest.mark.robustness, pytest.mark.usefixtures("one_thread")]

HEADROOM = 3 << 30
"""Address space a capped test may add to what the process already maps."""


@contextmanager
def address_space_cap(headroom: int = HEADROOM) -> Iterator[None]:
    """A real RLIMIT_AS a little above what the process maps now: an allocation of gigabytes fails at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm", encoding="ascii") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    limit = mapped + headroom if hard == resource.RLIM_INFINITY else min(hard, mapped + headroom)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def assert_refused(result: Result, path: Path, *fragments: str) -> None:
    """Exit 2 and exactly one ``error:`` line, naming ``path`` and saying each fragment; no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1, result.stderr
    assert str(path) in errors[0], errors[0]
    assert all(fragment in errors[0] for fragment in fragments), errors[0]
    assert "rerun with --debug" not in result.output, "the CLI's fallback for unexpected exceptions"
    assert "Traceback" not in result.output


# --- model specs and model files ---------------------------------------------------------------------------------

TINY_ENCODER = {"name": "edsr-baseline", "args": {"channels": 8, "blocks": 1}}
TINY_SPEC = {
    "name": "linf",
    "args": {"encoder": TINY_ENCODER, "patch_size": 3, "hidden": 16, "mlp_layers": 2, "flow_layers": 4},
}


def linf_spec(encoder: dict[str, Any] | None = None, **args: Any) -> dict[str, Any]:
    """The tiny LINF's spec with some arguments (or its encoder) replaced."""
    return {"name": "linf", "args": {**TINY_SPEC["args"], "encoder": encoder or TINY_ENCODER, **args}}


def prior_spec(fade: object) -> dict[str, Any]:
    """A LINF-LP spec on the tiny LINF with this fade argument."""
    return {"name": "linf-lp", "args": {"flow": TINY_SPEC, "latent": {"name": "lp-latent", "args": {}}, "fade": fade}}


def write_model_file(path: Path, spec: str, version: str = "1") -> Path:
    """A .safetensors model file with the tiny LINF's weights and this spec text in its metadata."""
    tensors = {name: value.contiguous() for name, value in tiny_linf(3).state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "flowsr-model", "format_version": version, "spec": spec})
    return path


def upscale_with(run_cli: CliInvoker, tmp_path: Path, model: Path) -> Result:
    PILImage.new("RGB", (6, 5), (90, 120, 150)).save(tmp_path / "in.png")
    return run_cli("upscale", str(tmp_path / "in.png"), "-s", "2", "--model", str(model))


ABSURD_SPECS = {
    "a-million-blocks": (
        linf_spec({"name": "edsr-baseline", "args": {"channels": 8, "blocks": 10**6}}),
        "argument blocks = 1000000 must be an integer from 0 to 128",
    ),
    "a-billion-channels": (
        linf_spec({"name": "rrdb", "args": {"channels": 10**9, "blocks": 1, "growth": 4}}),
        "argument channels = 1000000000 must be an integer from 1 to 1024",
    ),
    "ten-million-flow-layers": (linf_spec(flow_layers=10**7), "argument flow_layers = 10000000"),
    "srflow-ten-million-steps": ({"name": "srflow", "args": {"steps": 10**7}}, "must be an integer from 0 to 64"),
    "srflow-a-thousand-levels": ({"name": "srflow", "args": {"levels": 1000}}, "levels = 1000"),
    "latent-widths": (
        {"name": "linf-lp", "args": {"flow": TINY_SPEC, "latent": {"name": "lp-latent", "args": {"widths": [10**9]}}}},
        "argument widths = [1000000000] must be a list of at most 8 integers from 1 to 4096",
    ),
    "srflow-lp-latent-widths": (
        {"name": "srflow-lp", "args": {"flow": {"name": "srflow", "args": {}}, "latent": {"widths": [8] * 100}}},
        "argument latent.widths",
    ),
}


@pytest.mark.parametrize(("spec", "message"), list(ABSURD_SPECS.values()), ids=list(ABSURD_SPECS))
def test_absurd_sizes_are_refused_before_anything_is_built(
    run_cli: CliInvoker, tmp_path: Path, spec: dict[str, Any], message: str
) -> None:
    model = write_model_file(tmp_path / "absurd.safetensors", json.dumps(spec))
    with address_space_cap():
        result = upscale_with(run_cli, tmp_path, model)
    assert_refused(result, model, message)


def test_a_spec_within_bounds_but_beyond_memory_is_refused_before_allocating(
    run_cli: CliInvoker, tmp_path: Path
) -> None:
    """Each size is allowed, together they need ~217 GB: estimated on the meta device, refused at once."""
    huge_encoder = {"name": "rrdb", "args": {"channels": 1024, "blocks": 128, "growth": 1024}}
    if available_memory(torch.device("cpu")) > 300e9:
        pytest.skip("this machine could hold the model")
    model = write_model_file(tmp_path / "huge.safetensors", json.dumps(linf_spec(huge_encoder)))
    with address_space_cap():
        result = upscale_with(run_cli, tmp_path, model)
    assert_refused(result, model, "model 'linf' needs 217.5 GB for its weights, more than the", "memory available")


def test_the_recipes_paper_sized_models_are_within_bounds() -> None:
    for spec in ARCHITECTURES.values():
        check_spec(spec)
    for prior in PRIORS.values():
        for flow in (spec for spec in ARCHITECTURES.values() if spec["name"] == prior["flow"]):
            check_spec({"name": prior["name"], "args": {"flow": flow, "latent": prior["latent"]}})


MALFORMED_SPECS = {
    "negative-channels": (
        json.dumps(linf_spec({"name": "edsr-baseline", "args": {"channels": -8, "blocks": 1}})),
        "1",
        "argument channels = -8 must be an integer from 1 to 1024",
    ),
    "not-json": ('{"name": "linf", "args": {', "1", "its spec is not valid JSON"),
    "string-format-version": (json.dumps(TINY_SPEC), "one", "format version 'one' is not a whole number"),
    "deeply-nested-json": ("[" * 30000 + "]" * 30000, "1", "its spec is not valid JSON (nested too deeply)"),
    "very-long-spec": (json.dumps(linf_spec(padding=["x" * 1000] * 200)), "1", "flowsr specs take at most 65,536"),
    "deeply-nested-args": (json.dumps(prior_spec(json.loads('{"a": ' * 40 + "1" + "}" * 40))), "1", "deeper than 16"),
    "spec-is-a-list": ("[1, 2]", "1", "a model spec needs a 'name' string"),
    "spec-is-null": ("null", "1", "a model spec needs a 'name' string"),
    "name-is-a-number": ('{"name": 3, "args": {}}', "1", "a model spec needs a 'name' string"),
    "args-is-a-list": ('{"name": "linf", "args": [1, 2]}', "1", "its args must be an object"),
    "hidden-is-text": (json.dumps(linf_spec(hidden="16")), "1", "argument hidden = '16' must be an integer"),
    "blocks-is-a-float": (
        json.dumps(linf_spec({"name": "edsr-baseline", "args": {"channels": 8, "blocks": 1.5}})),
        "1",
        "argument blocks = 1.5 must be an integer",
    ),
    "blocks-is-true": (
        json.dumps(linf_spec({"name": "edsr-baseline", "args": {"channels": 8, "blocks": True}})),
        "1",
        "argument blocks = True must be an integer",
    ),
    "encoder-is-text": (json.dumps(linf_spec(encoder="edsr")), "1", "argument encoder: a model spec needs a 'name'"),
    "encoder-is-a-flow": (json.dumps(linf_spec(encoder=TINY_SPEC)), "1", "encoder must be an LR encoder"),
    "unknown-argument": (json.dumps(linf_spec(width=3)), "1", "bad arguments for model 'linf'"),
    "missing-argument": ('{"name": "linf-lp", "args": {}}', "1", "missing a required argument: 'flow'"),
    "huge-integer": (json.dumps(prior_spec({"from_scale": 10**400})), "1", "more than any size flowsr takes"),
    "not-a-number": (
        json.dumps(prior_spec({"from_scale": float("nan"), "width": 1.0})),
        "1",
        "argument fade.from_scale = nan is not a finite number",
    ),
}


@pytest.mark.parametrize(("spec", "version", "message"), list(MALFORMED_SPECS.values()), ids=list(MALFORMED_SPECS))
def test_malformed_spec_metadata_is_one_line_naming_the_file(
    run_cli: CliInvoker, tmp_path: Path, spec: str, version: str, message: str
) -> None:
    model = write_model_file(tmp_path / "bad.safetensors", spec, version)
    with address_space_cap():
        result = upscale_with(run_cli, tmp_path, model)
        assert_refused(result, model, message)
        with pytest.raises((ModelFileError, ModelSpecError), match=f"model file {model}: "):
            load_model(model)


# --- original checkpoints (`flowsr models import`) ---------------------------------------------------------------


def linf_checkpoint() -> dict[str, Any]:
    return original_linf(tiny_linf(3), "linf-patch")


def srflow_checkpoint() -> dict[str, Any]:
    return dict(original_srflow(source_srflow(TINY_SRFLOW)))


def _set(checkpoint: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    damaged = copy.copy(checkpoint)
    inner = damaged
    for key in path[:-1]:
        inner[key] = copy.copy(inner[key])
        inner = inner[key]
    inner[path[-1]] = value
    return damaged


def _without(checkpoint: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    damaged = _set(checkpoint, path, None)
    inner = damaged
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return damaged


SD = ("model", "sd")
ARGS = ("model", "args")
FLOW_LAYER = "flowUpsamplerNet.layers.3."
MALFORMED_CHECKPOINTS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "linf-sd-not-a-dict": (lambda: _set(linf_checkpoint(), SD, [1, 2]), "its 'sd' is of type list, not a state dict"),
    "linf-sd-a-tensor": (lambda: _set(linf_checkpoint(), SD, torch.zeros(3)), "its 'sd' is of type Tensor"),
    "linf-missing-head": (
        lambda: _without(linf_checkpoint(), (*SD, "encoder.head.0.weight")),
        "missing weight encoder.head.0.weight",
    ),
    "linf-args-a-list": (lambda: _set(linf_checkpoint(), ARGS, [1, 2]), "its 'args' is of type list"),
    "linf-args-text": (lambda: _set(linf_checkpoint(), (*ARGS, "hidden_dim"), "wide"), "hidden_dim = 'wide'"),
    "linf-huge-hidden": (
        lambda: _set(linf_checkpoint(), (*ARGS, "hidden_dim"), 10**9),
        "argument hidden = 1000000000 must be an integer from 2 to 8192",
    ),
    "linf-huge-flow": (
        lambda: _set(linf_checkpoint(), (*ARGS, "flow_layers"), 10**7),
        "argument flow_layers = 10000000",
    ),
    "linf-encoder-spec-text": (
        lambda: _set(linf_checkpoint(), (*ARGS, "encoder_spec"), "edsr"),
        "its 'encoder_spec' is of type str",
    ),
    "linf-rrdb-without-dense-blocks": (
        lambda: _set(
            _set(linf_checkpoint(), (*ARGS, "encoder_spec"), {"name": "rrdb"}),
            (*SD, "encoder.conv_first.weight"),
            torch.zeros(8, 3, 3, 3),
        ),
        "missing weight encoder.RRDB_trunk.0.RDB1.conv1.weight",
    ),
    "linf-scalar-head": (
        lambda: _set(linf_checkpoint(), (*SD, "encoder.head.0.weight"), torch.tensor(1.0)),
        "encoder.head.0.weight has shape () where a convolution weight belongs",
    ),
    "linf-name-a-list": (lambda: _set(linf_checkpoint(), ("model", "name"), ["linf"]), "model ['linf'] is not LINF"),
    "linf-weight-not-a-tensor": (
        lambda: _set(linf_checkpoint(), (*SD, "coef.bias"), "x"),
        "entries that are not tensors of numbers: coef.bias",
    ),
    "linf-integer-key": (lambda: _set(linf_checkpoint(), (*SD, 7), torch.zeros(1)), "keys that are not text"),
    "srflow-scalar-first-conv": (
        lambda: _set(srflow_checkpoint(), ("RRDB.conv_first.weight",), torch.tensor(1.0)),
        "RRDB.conv_first.weight has shape () where a convolution weight belongs",
    ),
    "srflow-first-conv-without-channels": (
        lambda: _set(srflow_checkpoint(), ("RRDB.conv_first.weight",), torch.zeros(0, 3, 3, 3)),
        "RRDB.conv_first.weight has shape (0, 3, 3, 3)",
    ),
    "srflow-flat-injector": (
        lambda: _set(srflow_checkpoint(), (FLOW_LAYER + "affine.fFeatures.0.weight",), torch.zeros(8)),
        "layers.3.affine.fFeatures.0.weight has shape (8,) where a convolution weight belongs",
    ),
    "srflow-far-layer": (
        lambda: _set(srflow_checkpoint(), ("flowUpsamplerNet.layers.100000000.actnorm.bias",), torch.zeros(1)),
        "more flow layers than any SRFlow",
    ),
    "srflow-missing-layers": (
        lambda: {key: value for key, value in srflow_checkpoint().items() if ".layers.1." not in key},
        "not an SRFlow checkpoint this flowsr can convert",
    ),
    "srflow-sparse-tensor": (
        lambda: _set(srflow_checkpoint(), ("RRDB.conv_first.bias",), torch.zeros(8).to_sparse()),
        "entries that are not tensors of numbers: RRDB.conv_first.bias",
    ),
}


@pytest.mark.parametrize(("build", "message"), list(MALFORMED_CHECKPOINTS.values()), ids=list(MALFORMED_CHECKPOINTS))
def test_malformed_original_checkpoints_are_one_line_naming_the_file(
    run_cli: CliInvoker, tmp_path: Path, build: Callable[[], dict[str, Any]], message: str
) -> None:
    path = tmp_path / "original.pth"
    torch.save(build(), path)
    with address_space_cap():
        result = run_cli("models", "import", str(path), "--name", "x")
    assert_refused(result, path, message)
    assert not result.stdout


JUNK: list[Callable[[], object]] = [
    lambda: None,
    lambda: "text",
    lambda: -3,
    lambda: 10**12,
    lambda: 2.5,
    lambda: [1, 2],
    lambda: {"a": torch.zeros(1)},
    lambda: torch.tensor(1.0),
    lambda: torch.zeros(0),
    lambda: torch.zeros(0, 3, 3, 3),
    lambda: torch.zeros(2, 3, 1, 1, 2),
    lambda: torch.ones(4, dtype=torch.bool),
    lambda: torch.zeros(3, dtype=torch.complex64),
    lambda: torch.arange(6, dtype=torch.int64).view(2, 3),
    lambda: torch.full((8, 3, 3, 3), float("nan")),
]
NEW_KEYS = [
    "flowUpsamplerNet.layers.999999.actnorm.bias",
    "flowUpsamplerNet.layers.3.conv.weight",
    "RRDB.RRDB_trunk.99.RDB1.conv1.weight",
    "RRDB.upconv3.weight",
    "encoder.body.99.body.0.weight",
    "encoder.tail.0.weight",
    "layers.9.weight",
    "imnet.linears.40._weight",
    "module.coef.weight",
]


def _entries(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Paths to every entry of the nested dicts of a checkpoint (not into tensors or lists)."""
    if not isinstance(value, dict):
        return []
    return [entry for key, item in value.items() for entry in [(*path, key), *_entries(item, (*path, key))]]


def _reshaped(value: object) -> object:
    if not isinstance(value, torch.Tensor):
        return value
    return value.flatten() if value.dim() > 1 else value[None]


def _value(checkpoint: dict[str, Any], path: tuple[object, ...]) -> Any:
    value: Any = checkpoint
    for key in path:
        value = value[key]
    return value


BASE_CHECKPOINTS = {"linf": linf_checkpoint(), "srflow": srflow_checkpoint()}


@st.composite
def mutated_checkpoints(draw: st.DrawFn) -> dict[str, Any]:
    """A valid tiny LINF or SRFlow checkpoint with one to three entries deleted, replaced, reshaped or added."""
    checkpoint = BASE_CHECKPOINTS[draw(st.sampled_from(sorted(BASE_CHECKPOINTS)))]
    for _ in range(draw(st.integers(1, 3))):
        paths = _entries(checkpoint)
        if not paths:
            break
        path: Any = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["delete", "replace", "reshape", "add"]))
        if action == "delete":
            checkpoint = _without(checkpoint, path)
        elif action == "replace":
            checkpoint = _set(checkpoint, path, draw(st.sampled_from(JUNK))())
        elif action == "reshape":
            checkpoint = _set(checkpoint, path, _reshaped(_value(checkpoint, path)))
        else:
            checkpoint = _set(checkpoint, (*path[:-1], draw(st.sampled_from(NEW_KEYS))), torch.zeros(4))
    return checkpoint


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(checkpoint=mutated_checkpoints())
def test_mutated_checkpoints_convert_or_give_a_checkpoint_import_error(
    tmp_path_factory: pytest.TempPathFactory, checkpoint: dict[str, Any]
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "mutated.pth"
    torch.save(checkpoint, path)
    with address_space_cap():
        try:
            convert_original(path)
        except CheckpointImportError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(checkpoint=mutated_checkpoints())
def test_mutated_checkpoints_through_the_cli(
    tmp_path_factory: pytest.TempPathFactory, checkpoint: dict[str, Any]
) -> None:
    folder = tmp_path_factory.mktemp("fuzz-cli")
    torch.save(checkpoint, folder / "mutated.pth")
    environment = {"FLOWSR_CACHE_DIR": str(folder / "cache"), "FLOWSR_CONFIG": str(folder / "config.toml")}
    with address_space_cap():
        result = CliRunner().invoke(
            app, ["models", "import", str(folder / "mutated.pth"), "--name", "x"], env=environment
        )
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert_refused(result, folder / "mutated.pth")


# --- training checkpoints (`flowsr train ... --resume`) ----------------------------------------------------------

TRAIN_RECIPE = "lr_size = 24\nqueries = 64\nlog_every = 1\ncheckpoint_every = 1\nval_images = 1\n"
PRIOR_RECIPE = TRAIN_RECIPE + "scale_min = 2.0\nscale_max = 2.0\nval_scale = 2.0\n"


class Runs:
    """Real tiny training runs: a flow and a prior, each two steps, with their checkpoints."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.photos = folder / "photos"
        self.photos.mkdir()
        for path in sorted((SHARED / "data/train/bsds500_train").iterdir())[:2]:
            shutil.copy(path, self.photos / path.name)
        self.flow_model = folder / "tiny.safetensors"
        save_model(tiny_linf(3), self.flow_model)
        (folder / "flow.toml").write_text(TRAIN_RECIPE)
        (folder / "prior.toml").write_text(PRIOR_RECIPE)
        self.environment = {
            "FLOWSR_CONFIG": str(folder / "config.toml"),
            "FLOWSR_CACHE_DIR": str(folder / "cache"),
            "FLOWSR_BACKBONE_DIR": str(SHARED / "weights"),
            "FLOWSR_MODEL": "bicubic",
        }

    def flow_args(self, out: Path) -> list[str]:
        return ["train", "flow", str(self.photos), "--out", str(out), "--init", str(self.flow_model),
                "--recipe", str(self.folder / "flow.toml"), "--batch-size", "1", "--workers", "0"]  # fmt: skip

    def prior_args(self, out: Path) -> list[str]:
        return ["train", "prior", str(self.photos), "--out", str(out), "--flow", str(self.flow_model),
                "--recipe", str(self.folder / "prior.toml"), "--batch-size", "1", "--workers", "0"]  # fmt: skip

    def train(self, args: list[str], *extra: str) -> Result:
        return CliRunner().invoke(app, [*args, *extra], env=self.environment)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    runs = Runs(tmp_path_factory.mktemp("training"))
    for name, args in (("flow", runs.flow_args), ("prior", runs.prior_args)):
        result = runs.train(args(runs.folder / name), "--steps", "2")
        assert result.exit_code == 0, result.output
        checkpoint = runs.folder / name / "checkpoint.safetensors"
        damaged_copy(checkpoint, checkpoint, lambda tensors, metadata: metadata.update(state=INTERRUPTED))
    return runs


INTERRUPTED = json.dumps({"step": 2, "total_steps": 4, "skipped_steps": 0})
"""The state of a run stopped after two of its four steps: resuming it trains two more."""


Tensors = dict[str, torch.Tensor]
Metadata = dict[str, str]


def damaged_copy(source: Path, target: Path, damage: Callable[[Tensors, Metadata], None]) -> Path:
    """A copy of a training checkpoint with ``damage`` applied to its tensors and metadata."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(source))
    damage(tensors, metadata)
    save_file(tensors, str(target), metadata=metadata)
    return target


def _first(tensors: Tensors, prefix: str, suffix: str = "") -> str:
    return next(name for name in sorted(tensors) if name.startswith(prefix) and name.endswith(suffix))


def _optimizer(metadata: Metadata, value: object) -> None:
    metadata["optimizer"] = json.dumps(value)


DAMAGES: dict[str, tuple[Callable[[Tensors, Metadata], None], str]] = {
    "missing-weight": (lambda t, m: t.pop("model.encoder.head.0.weight"), "missing: encoder.head.0.weight"),
    "wrong-shape-weight": (
        lambda t, m: t.update({"model.flow.last.bias": torch.zeros(5)}),
        "wrong shape: flow.last.bias",
    ),
    "missing-optimizer-tensor": (
        lambda t, m: t.pop(_first(t, "optimizer.", ".exp_avg_sq")),
        "optimizer state of parameter",
    ),
    "wrong-shape-optimizer-tensor": (
        lambda t, m: t.update({_first(t, "optimizer.", ".exp_avg"): torch.zeros(3)}),
        "has shape (3,)",
    ),
    "unknown-optimizer-tensor": (
        lambda t, m: t.update({"optimizer.99999.exp_avg": torch.zeros(1)}),
        "optimizer.99999.exp_avg",
    ),
    "optimizer-not-json": (lambda t, m: m.update({"optimizer": "{oops"}), "its optimizer is not valid JSON"),
    "optimizer-a-list": (lambda t, m: _optimizer(m, []), "its optimizer state does not match"),
    "optimizer-groups-missing": (
        lambda t, m: _optimizer(m, {"param_groups": [], "plain": {}}),
        "its optimizer state does not match",
    ),
    "optimizer-plain-values": (
        lambda t, m: _optimizer(m, {**json.loads(m["optimizer"]), "plain": {"0": {"momentum": "x"}}}),
        "momentum",
    ),
    "no-rng-state": (lambda t, m: t.pop("rng.torch"), "no valid random-number state"),
    "float-rng-state": (lambda t, m: t.update({"rng.torch": torch.zeros(10)}), "no valid random-number state"),
    "invalid-rng-state": (
        lambda t, m: t.update({"rng.torch": torch.full_like(t["rng.torch"], 7)}),
        "no valid random-number state",
    ),
    "state-not-json": (lambda t, m: m.update({"state": "step=3"}), "its state is not valid JSON"),
    "state-wrong-types": (lambda t, m: m.update({"state": '{"step": "x", "total_steps": 3}'}), "its step counts"),
    "state-empty": (lambda t, m: m.update({"state": "{}"}), "its step counts"),
    "no-spec": (lambda t, m: m.pop("spec"), "its metadata has no 'spec'"),
    "other-spec": (
        lambda t, m: m.update({"spec": json.dumps(linf_spec(hidden=32))}),
        "its model differs from this run's (hidden: 32 in the file,",
    ),
    "deeply-nested-json": (lambda t, m: m.update({"recipe": "[" * 30000 + "]" * 30000}), "nested too deeply"),
}


@pytest.mark.parametrize(("damage", "message"), list(DAMAGES.values()), ids=list(DAMAGES))
def test_a_damaged_flow_checkpoint_is_refused_before_training(
    runs: Runs, tmp_path: Path, damage: Callable[[Tensors, Metadata], None], message: str
) -> None:
    checkpoint = damaged_copy(runs.folder / "flow/checkpoint.safetensors", tmp_path / "damaged.safetensors", damage)
    result = runs.train(runs.flow_args(tmp_path / "out"), "--resume", str(checkpoint))
    assert_refused(result, checkpoint, message)
    assert not (tmp_path / "out").exists()


def test_files_that_are_not_training_checkpoints_are_refused(runs: Runs, tmp_path: Path) -> None:
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(300))
    data = (runs.folder / "flow/checkpoint.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    cases = {
        tmp_path / "noise.safetensors": "not a readable .safetensors file",
        tmp_path / "cut.safetensors": "not a readable .safetensors file",
        runs.folder / "flow/model.safetensors": "not a flowsr training checkpoint",
        tmp_path / "missing.safetensors": "not found",
    }
    for path, message in cases.items():
        result = runs.train(runs.flow_args(tmp_path / "out"), "--resume", str(path))
        assert_refused(result, path, message)


def test_an_intact_checkpoint_resumes(runs: Runs, tmp_path: Path) -> None:
    shutil.copy(runs.folder / "flow/checkpoint.safetensors", tmp_path / "intact.safetensors")
    result = runs.train(runs.flow_args(tmp_path / "out"), "--resume", str(tmp_path / "intact.safetensors"))
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["step"] for line in (tmp_path / "out/log.jsonl").read_text().splitlines()] == [3, 4]


PRIOR_DAMAGES: dict[str, tuple[Callable[[Tensors, Metadata], None], str]] = {
    "missing-latent-weight": (lambda t, m: t.pop(_first(t, "model.latent.", ".weight")), "missing: latent."),
    "wrong-shape-moment": (
        lambda t, m: t.update({_first(t, "optimizer.", ".exp_avg"): torch.zeros(2, 2)}),
        "has shape (2, 2)",
    ),
}


@pytest.mark.parametrize(("damage", "message"), list(PRIOR_DAMAGES.values()), ids=list(PRIOR_DAMAGES))
def test_a_damaged_prior_checkpoint_is_refused_before_training(
    runs: Runs, tmp_path: Path, damage: Callable[[Tensors, Metadata], None], message: str
) -> None:
    checkpoint = damaged_copy(runs.folder / "prior/checkpoint.safetensors", tmp_path / "damaged.safetensors", damage)
    result = runs.train(runs.prior_args(tmp_path / "out"), "--resume", str(checkpoint))
    assert_refused(result, checkpoint, message)


def test_a_flow_checkpoint_cannot_resume_a_prior(runs: Runs, tmp_path: Path) -> None:
    checkpoint = runs.folder / "flow/checkpoint.safetensors"
    result = runs.train(runs.prior_args(tmp_path / "out"), "--resume", str(checkpoint))
    assert_refused(result, checkpoint, "its model differs from this run's (a linf in the file, a linf-lp here)")
