"""The training loop shared by `train flow` and `train prior`: schedule, checkpoints, resume, DDP, logs."""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from flowsr_cli.console import report_note
from flowsr_cli.engine.sampling import row_seed
from flowsr_cli.errors import FlowsrError, UsageError
from flowsr_cli.families.model_file import save_model
from flowsr_cli.io.atomic import atomic_write_bytes
from flowsr_cli.train.distributed import Cluster
from flowsr_cli.train.recipe import Recipe, learning_rate_at, to_toml
from flowsr_cli.train.state import TrainingState, load_training_state, save_training_state

MAX_BAD_STEPS = 20
"""Consecutive non-finite losses after which training stops (the original skipped them forever)."""

WARMUP_STEPS = 3
"""Steps left out of the timing (data workers starting, first allocations)."""
TIMING_STEPS = 10
REPLAN_STEPS = 10
"""With a time budget, the step count is fitted again at every step from the speed of the last this
many steps, until the first learning-rate milestone: a machine that was busy while the first steps
were timed must not cut the run short (later changes would move milestones already passed)."""
"""Steps timed, after the warm-up, before a time budget is turned into a step count."""

if TYPE_CHECKING:
    from flowsr_cli.train.data import Batch

Validator = Callable[[], dict[str, float]]


@dataclass(frozen=True)
class RunFiles:
    """What a training run writes into its output folder."""

    folder: Path

    @property
    def checkpoint(self) -> Path:
        """The latest resumable training state."""
        return self.folder / "checkpoint.safetensors"

    @property
    def model(self) -> Path:
        """The exported model for `upscale` and `eval`."""
        return self.folder / "model.safetensors"

    @property
    def log(self) -> Path:
        """Losses and validation metrics, one JSON object per line."""
        return self.folder / "log.jsonl"

    @property
    def recipe(self) -> Path:
        """The effective recipe, to re-run the same training."""
        return self.folder / "recipe.toml"


class ProgressView:
    """Rich progress with loss, speed and ETA (rank 0 only; silent elsewhere)."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from flowsr_cli.console import stderr_console

        self._progress = (
            Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=stderr_console(),
            )
            if enabled
            else None
        )
        self._task = None

    def __enter__(self) -> ProgressView:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("", total=None, status="")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, total: int, status: str) -> None:
        """Show the step, the planned total and a status line."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step, total=total or None, status=status)


class Trainer:
    """Optimises ``objective`` (whose forward returns the losses) and exports ``model``."""

    def __init__(
        self,
        model: nn.Module,
        objective: nn.Module,
        recipe: Recipe,
        batches: Callable[[int], Iterable[Batch]],
        files: RunFiles,
        cluster: Cluster,
        device: torch.device,
        validate: Validator | None = None,
        show_progress: bool = True,
    ) -> None:
        self.model = model
        self.objective = objective
        self.recipe = recipe
        self.batches = batches
        self.files = files
        self.cluster = cluster
        self.device = device
        self.validate = validate
        self.show_progress = show_progress and cluster.is_main
        parameters = [parameter for parameter in objective.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.Adam(parameters, lr=recipe.learning_rate, betas=(0.9, recipe.adam_beta2))
        self.mixed_precision = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.mixed_precision)
        self._unlogged: dict[str, object] | None = None
        """The record of the last trained step while log_every has not written it."""
        self._schedule_until_fit: int | None = None
        """A resumed run under a time budget: the step count its checkpoint's schedule was planned for, which sets the
        learning rate until the budget is fitted (else those steps would run at the recipe's base rate)."""

    def _log(self, record: dict[str, object]) -> None:
        if self.cluster.is_main:
            with self.files.log.open("a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")

    def _log_last_step(self) -> None:
        """Write the last trained step's record if log_every left it out: every run logs its last step."""
        if self._unlogged is not None:
            self._log(self._unlogged)
            self._unlogged = None

    def _save(self, state: TrainingState) -> None:
        if self.cluster.is_main:
            save_training_state(self.files.checkpoint, self.model, self.optimizer, state, asdict(self.recipe))

    def _planned_total(self, state: TrainingState, per_step: float, deadline: float) -> int:
        """Steps that fit the time budget at ``per_step`` seconds each (at most --steps, if given)."""
        fits = state.step + max(1, math.floor(0.95 * (deadline - time.monotonic()) / per_step))
        total = min(fits, self.recipe.steps) if self.recipe.steps else fits
        if self.cluster.distributed:
            shared = torch.tensor([total], device=self.device)
            torch.distributed.broadcast(shared, src=0)
            total = int(shared.item())
        return total

    def run(self, resume: Path | None = None) -> Path:
        """Train to the planned step count (Ctrl-C writes a checkpoint first); returns the exported model.

        ``recipe.steps`` counts the whole run, also when resuming: a ``resume`` checkpoint (checked and
        restored before anything is written) continues from its step up to it. A checkpoint already there
        has nothing to train: that is said, and its model exported."""
        state = TrainingState(step=0, total_steps=self.recipe.steps if not self.recipe.time_budget else 0)
        if resume is not None:
            state = self._resumed(resume)
        self.files.folder.mkdir(parents=True, exist_ok=True)
        self.objective.train()
        if self.cluster.is_main:
            atomic_write_bytes(self.files.recipe, to_toml(self.recipe).encode("utf-8"))
        if not (state.total_steps and state.step >= state.total_steps):
            self._train(state)
        self._save(state)
        if self.cluster.is_main:
            save_model(self.model, self.files.model)
        return self.files.model

    def _resumed(self, resume: Path) -> TrainingState:
        """The restored state of ``resume`` with this run's total: ``recipe.steps``, or under a time budget
        alone the checkpoint's plan until the budget fits a new one. One line says where the run stands."""
        state = load_training_state(resume, self.model, self.optimizer)
        steps, budget = self.recipe.steps, self.recipe.time_budget
        if steps and state.step > steps:
            raise UsageError(
                f"steps {steps} (--steps or --recipe) is below step {state.step} of the training checkpoint {resume}; "
                f"steps counts the whole run, so give more than {state.step} to train on"
            )
        if budget:
            self._schedule_until_fit = max(state.total_steps, state.step)
        state.total_steps = steps or (state.total_steps if state.total_steps > state.step else 0)
        if steps and state.step == steps:
            self._note(
                f"nothing to train: {resume} is at step {steps} of {steps} already (steps counts the whole run: "
                f"give --steps above {steps} to train on); exporting its model"
            )
        elif budget:
            limit = f" (at most to step {steps})" if steps else ""
            self._note(f"resuming at step {state.step} from {resume}, for {budget:g} minutes{limit}")
        else:
            self._note(f"resuming at step {state.step} of {steps} from {resume}")
        return state

    def _note(self, message: str) -> None:
        if self.cluster.is_main:
            report_note(message)

    def _train(self, state: TrainingState) -> None:
        """The steps from ``state`` on, under the time budget if any, then a validation of the last step."""
        module = self.objective
        if self.cluster.distributed:
            module = nn.parallel.DistributedDataParallel(self.objective)
        budget_deadline = time.monotonic() + 60 * self.recipe.time_budget if self.recipe.time_budget else None
        first_step = state.step
        try:
            self._loop(module, state, budget_deadline)
        except KeyboardInterrupt:
            self._save(state)
            raise
        finally:
            self._log_last_step()
        if state.step > first_step and state.step % self.recipe.val_every != 0:
            self._validate(state)

    def _loop(self, module: nn.Module, state: TrainingState, deadline: float | None) -> None:
        started = time.monotonic()
        first_step = state.step
        bad_in_a_row = 0
        fitting = deadline is not None
        recent: deque[float] = deque(maxlen=REPLAN_STEPS + 1)
        with ProgressView(self.show_progress) as view:
            for batch in self.batches(state.step):
                if state.step - first_step >= WARMUP_STEPS:
                    recent.append(time.monotonic())
                if fitting and deadline is not None and state.step - first_step >= WARMUP_STEPS + TIMING_STEPS:
                    per_step = (recent[-1] - recent[0]) / (len(recent) - 1)
                    state.total_steps = max(state.step + 1, self._planned_total(state, per_step, deadline))
                    self._schedule_until_fit = None
                    fitting = state.step < min(self.recipe.milestones, default=1.0) * state.total_steps
                if state.total_steps and state.step >= state.total_steps:
                    break
                if deadline is not None and not self.cluster.distributed and time.monotonic() > deadline:
                    break
                losses = self._step(module, batch, state)
                if losses is None:
                    bad_in_a_row += 1
                    if bad_in_a_row > MAX_BAD_STEPS:
                        self._save(state)
                        raise FlowsrError(
                            f"{bad_in_a_row} non-finite losses in a row at step {state.step}; "
                            "lower the learning rate or check the data (checkpoint saved)"
                        )
                    continue
                bad_in_a_row = 0
                self._after_step(state, losses, started, first_step, view)

    def _step(self, module: nn.Module, batch: Batch, state: TrainingState) -> dict[str, float] | None:
        planned = self._schedule_until_fit or state.total_steps or 10**12
        learning_rate = learning_rate_at(self.recipe, state.step, planned)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        generator = torch.Generator().manual_seed(row_seed(self.recipe.seed + 1, state.step))
        lr = batch.lr.to(self.device) * 2 - 1
        hr = batch.hr.to(self.device) * 2 - 1
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.mixed_precision):
            losses = module(lr, hr, state.step, generator)
        loss = losses["loss"]
        state.step += 1
        if not self._finite_everywhere(loss):
            return self._skipped(state, "non-finite loss")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        gradient_norm = self._clip_gradients()
        if gradient_norm is not None and not math.isfinite(gradient_norm) and not self.mixed_precision:
            return self._skipped(state, "non-finite gradient")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        logged = {name: float(value.detach()) for name, value in losses.items()} | {"lr": learning_rate}
        return logged | ({"grad_norm": gradient_norm} if gradient_norm is not None else {})

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every rank: under DDP all ranks skip a step together, or none does
        (a rank that skipped its backward alone would leave the others' gradient reduction unmatched)."""
        finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
        if self.cluster.distributed:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def _skipped(self, state: TrainingState, reason: str) -> None:
        """Count and log step ``state.step`` as skipped: no optimizer step was taken."""
        state.skipped_steps += 1
        self._log_last_step()
        self._log({"step": state.step, "skipped": reason})

    def _clip_gradients(self) -> float | None:
        """The recipe's gradient clipping, as the original HCFlow clips: each value to ``grad_clip_value``,
        then the total L2 norm to ``grad_clip_norm``. Returns the norm between the two clippings (None when
        ``grad_clip_norm`` is off); under DDP the gradients are already reduced, so every rank agrees."""
        value, norm = self.recipe.grad_clip_value, self.recipe.grad_clip_norm
        if not value and not norm:
            return None
        self.scaler.unscale_(self.optimizer)
        parameters = [parameter for group in self.optimizer.param_groups for parameter in group["params"]]
        if value:
            nn.utils.clip_grad_value_(parameters, value)
        return float(nn.utils.clip_grad_norm_(parameters, norm)) if norm else None

    def _after_step(
        self, state: TrainingState, losses: dict[str, float], started: float, first_step: int, view: ProgressView
    ) -> None:
        speed = (state.step - first_step) / max(time.monotonic() - started, 1e-9)
        view.update(state.step, state.total_steps, f"loss {losses['loss']:.4g}  {speed:.2f} it/s")
        self._unlogged = {"step": state.step, **losses, "seconds": round(time.monotonic() - started, 2)}
        if state.step % self.recipe.log_every == 0:
            self._log_last_step()
        if state.step % self.recipe.checkpoint_every == 0:
            self._save(state)
        if state.step % self.recipe.val_every == 0:
            self._validate(state)

    def _validate(self, state: TrainingState) -> None:
        """Validate the model as it is at ``state.step`` (rank 0, with --val): one line and a log record."""
        if self.validate is None or not self.cluster.is_main:
            return
        self.model.eval()
        metrics = self.validate()
        self.model.train()
        self._log({"step": state.step, "validation": metrics})
        thumbnail = f", LR vs bicubic {metrics['lr_bicubic_psnr']:.2f} dB" if "lr_bicubic_psnr" in metrics else ""
        report_note(
            f"validation at step {state.step}: PSNR-Y {metrics['psnr_y']:.2f} dB, SSIM {metrics['ssim']:.4f}{thumbnail}"
        )
