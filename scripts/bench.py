"""Speed and memory of `flowsr upscale` on this machine, each figure next to baselines measured in the
same run: bicubic, the same model without its consistency projection (`--consistency off`; the
projection's cost is the ratio of the two), and a naive reference path of the same model
(`naive_reference.py`: what the original code does, the whole image at once, the LR encoded and the flow's
conditioning computed anew for the prior's forward pass and again for the inverse, upstream's query batches
and flow layers; for an imported original checkpoint, ``linf-lp-original``, also the original's own latent inputs;
for an HCFlow imported from an original-layout checkpoint, ``paper-hcflow-original-random``, the original network's
own reverse pass at heat 0, the unprojected path then at heat 0 too), which the unprojected path must match.

Every (path, input, scale) runs in its own process so that its peak RSS is its own. Also measured:
the model's achieved GFLOP/s (torch.utils.flop_counter) against this machine's fp32 matmul GFLOP/s; the
unprojected path's FLOPs at every size and scale, which at that matmul speed give the least time any fp32 path
doing the same arithmetic needs, hence the most it could gain over the naive path ("fp32 floor"); the
second image of a real batch against the first, the cold start of `flowsr upscale` and `flowsr --help`.

    python scripts/bench.py                                    # default model, x2 x3.5 x4, 256^2 512^2 1024^2
    python scripts/bench.py --sizes 256 --scales 4 --json speed.json
    python scripts/bench.py --only-models --compare-size 256   # just the per-model x4 table, fp32 and bf16
    python scripts/bench.py --only-models --compare --rescale x2.safetensors x4.safetensors  # rescaling only
    python scripts/bench.py --model paper-lp-random --sizes 128 256 --scales 4 --compare  # the paper's size
    python scripts/bench.py --model paper-lp-original-random --sizes 256 --scales 4 --compare  # as imported
    python scripts/bench.py --model paper-lp-original-random --sizes 256 --scales 4 --compare --with-compile
    python scripts/bench.py --only-models --compare paper-hcflow-random --rescale paper-rescale-x4-random
    python scripts/bench.py --model paper-hcflow-original-random --sizes 128 --scales 4 --compare  # vs the original
    python scripts/bench.py --only-models --compare --backends 256    # --backend torch vs onnx only
    python scripts/bench.py --only-models --compare linf-lp --compare-size 512 --precisions fp32 bf16 bf16+compile

With ``--with-compile`` each row also times the unprojected path with ``--compile`` (float32, from an empty compile
cache, warmed up before the clock starts) against the same naive path, and prints the cold compile's cost.

`flowsr upscale` runs at ``--precision`` (default auto, as users run it); each row also times the same path in
float32 ("x fp32": how many times faster the chosen precision is), and the unprojected path, compared with the
naive one to 1e-4, runs in float32.

The per-model table runs every bundled flow model (``--compare``) at x4 on one input, each precision of
``--precisions`` in its own process, with its seconds per input megapixel as a ratio to the first model's in
the first precision, and each precision's speedup over the model's first. An entry ``PRECISION+compile`` runs
with ``--compile`` from an empty compile cache and prints what the compile cost, what it gains per image and after
how many images it pays for itself.

The rescaling table (``--rescale MODEL...``, image rescaling models) times `rescale down` and `rescale up` of
one full-size image of side ``--rescale-size``, each direction in its own process, in seconds per full-size
megapixel (both directions count the large image, so the two are comparable), next to bicubic-down +
linf-lp-up of the same image in the same run.

The backend table (``--backends SIDE``) times ``--model`` x4 on one SIDE² input with ``--backend torch`` and
``--backend onnx``, each in its own process after a warm-up on the whole input (so the ONNX graph is exported,
into a temporary cache, before the clock starts), and prints onnx's speed-up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_memory import PAPER_MODELS, make_input, materialise, original_hcflow
from naive_reference import naive_hcflow_upscale, naive_original_upscale, naive_upscale

from flowsr_cli.config import MODEL_BACKENDS, Settings
from flowsr_cli.engine.pipeline import pixels_to_tensor
from flowsr_cli.eval.evaluation import super_resolve
from flowsr_cli.families.hcflow.network import HCFlowSR
from flowsr_cli.families.linf.original_prior import OriginalLINFLP
from flowsr_cli.families.linf.prior import LINFLP
from flowsr_cli.families.model_file import load_model, read_model_metadata
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from flowsr_cli.hub.catalog import Hub
from flowsr_cli.io.reading import read_image
from flowsr_cli.io.sizing import Size

UPSCALE_PATHS = ("flowsr", "flowsr-fp32", "unprojected", "naive", "bicubic")
PATHS = (*UPSCALE_PATHS, "rescale-down", "rescale-up")
"""`flowsr upscale` as users run it (consistency auto, precision auto unless ``--precision`` says), the same in
float32, the same with --consistency off (float32), the naive path, bicubic; a rescaling model's forward (HR ->
its LR) and inverse (its 8-bit LR -> HR) as `flowsr rescale` runs them."""
WARM_UP_SIDE = 100
"""Each timed path first upscales a crop this small, so one-off kernel set-up is not timed. At x4 its 134 latent
columns make several bands of queries and a latent window that is not a multiple of the UNet's pooling: the
layouts a full-size image brings, for which torch.compile compiles its kernels a second time (``--compile``)."""
TARGET = (512, 4.0)
"""The input side and scale the issue's targets are stated for (FLOPs are counted there)."""
COMPILED = "+compile"
"""The suffix of a ``--precisions`` entry that runs with ``--compile``."""
COMPARED_MODELS = ("linf", "linf-lp", "srflow", "srflow-lp", "hcflow", "hcflow-lp")
"""The per-model table's default: those of these the hub knows, at x4 (every family can make x4)."""


def load_input(path: Path) -> torch.Tensor:
    """An image file as a (1, 3, h, w) tensor in [0, 1]."""
    return pixels_to_tensor(read_image(path, max_pixels=1 << 30).pixels)[:, :3].contiguous()


def runner(
    path: str,
    model: str,
    precision: str = "auto",
    backend: str = "torch",
    cache_dir: Path | None = None,
    compile_parts: bool = False,
) -> Any:
    """A function (lr, size) -> output of one path; ``precision`` is that of the ``flowsr`` path; ``backend`` runs
    the model's plain networks (exported ONNX graphs go to ``cache_dir``); ``compile_parts``: ``--compile``."""
    if path == "naive":
        hub = Hub(Settings())
        network = load_model(hub.resolve(model), "cpu")
        if isinstance(network, HCFlowSR):
            original = original_beside(Path(model))
            return lambda lr, size: naive_hcflow_upscale(original, lr)
        if not isinstance(network, LINFLP):
            raise SystemExit(f"the naive reference paths are LINF-LP's and HCFlow's; {model} is neither")
        naive = naive_original_upscale if isinstance(network, OriginalLINFLP) else naive_upscale
        return lambda lr, size: naive(network, lr, size)
    consistency = "off" if path == "unprojected" else "auto"
    # HCFlow's naive path runs at heat 0, so the unprojected path it must match does too (heat does not change speed)
    heat_zero = path == "unprojected" and Path(model).is_file() and model_name(Path(model)) == "hcflow"
    name = "bicubic" if path == "bicubic" else model
    precision = precision if path == "flowsr" else "fp32"
    request = UpscalerRequest(
        name,
        device="cpu",
        precision=precision,
        consistency=consistency,
        temperature=0.0 if heat_zero else None,
        hub=Hub(Settings()),
        backend=backend,
        compile=compile_parts,
        cache_dir=cache_dir,
    )
    upscaler = create_upscaler(request)
    return GuardedRun(upscaler)


class GuardedRun:
    """``run(lr, size)``: the upscaler's raw output (seed 0), counting in :attr:`guarded_tiles` the tiles whose
    exploding flow inverse the guard re-sampled (each costs another pass: such a run is not a speed figure)."""

    def __init__(self, upscaler: Any) -> None:
        self.upscaler = upscaler
        self.guarded_tiles = 0

    def __call__(self, lr: torch.Tensor, size: Size) -> torch.Tensor:
        return super_resolve(self, lr, size, 0)  # type: ignore[arg-type]  # upscale() is all it calls

    def upscale(self, lr: torch.Tensor, size: Size, sink: Any, seeds: Any, progress: Any = None) -> Any:
        """The upscaler's ``upscale``, its guarded tiles counted."""
        report = self.upscaler.upscale(lr, size, sink, seeds, progress)
        self.guarded_tiles += report.guarded_tiles
        return report


def original_beside(model_file: Path) -> Any:
    """The original-layout HCFlow whose checkpoint (``.pth``) lies beside ``model_file``, as ``--model
    paper-hcflow-original-random`` leaves it."""
    checkpoint = model_file.with_suffix(".pth")
    if not checkpoint.is_file():
        raise SystemExit(f"the naive HCFlow path needs the original checkpoint {checkpoint} (--model paper-hcflow-...)")
    original = original_hcflow(seed=0)
    original.load_state_dict(torch.load(checkpoint, weights_only=True))
    return original.eval()


def model_name(model_file: Path) -> str:
    """The network a model file's spec names."""
    return str(read_model_metadata(model_file)["spec"]["name"])


def rescale_runner(path: str, model: str) -> Any:
    """A function hr -> seconds of one rescaling direction on the full-size ``hr``: ``rescale-down`` makes the
    model's LR; ``rescale-up`` restores the HR from the model's 8-bit LR of ``hr``, made before the clock starts."""
    from flowsr_cli.families.rescalers import load_rescaler, prepare_rescaler

    rescaler = load_rescaler(prepare_rescaler(model, Hub(Settings())), torch.device("cpu"), "auto", "auto", [])

    def down(hr: torch.Tensor) -> float:
        return _timed(lambda: rescaler.downscale(hr))

    def up(hr: torch.Tensor) -> float:
        lr = (rescaler.downscale(hr).clamp(0, 1) * 255).round() / 255
        output = torch.empty(1, 3, hr.shape[-2], hr.shape[-1])

        def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
            output[..., rows.start : rows.stop, columns.start : columns.stop] = tile

        return _timed(lambda: rescaler.upscale(lr, sink, 0, rescaler.default_temperature))

    return down if path == "rescale-down" else up


def measure_child(arguments: argparse.Namespace) -> None:
    """One path at one input size and scale, in this process: prints seconds, peak RSS (and FLOPs)."""
    if arguments.path.startswith("rescale"):
        return measure_rescale_child(arguments)
    folder = arguments.input.parent
    run = runner(arguments.path, arguments.model, arguments.precision, arguments.backend, folder, arguments.compile)
    lr = load_input(arguments.input)
    size = Size(round(lr.shape[-1] * arguments.scale), round(lr.shape[-2] * arguments.scale))
    small = lr if arguments.warm_up_whole else lr[..., :WARM_UP_SIDE, :WARM_UP_SIDE]
    warm_up = _timed(
        lambda: run(small, Size(round(small.shape[-1] * arguments.scale), round(small.shape[-2] * arguments.scale)))
    )
    best = float("inf")
    guarded_before = getattr(run, "guarded_tiles", 0)
    for _ in range(arguments.repeats):
        started = time.perf_counter()
        output = run(lr, size)
        best = min(best, time.perf_counter() - started)
    result: dict[str, Any] = {
        "seconds": best,
        "warm_up_seconds": warm_up,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "guarded_tiles": getattr(run, "guarded_tiles", 0) - guarded_before,
    }
    if arguments.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            run(lr, size)
        result["flops"] = counter.get_total_flops()
    if arguments.save is not None:
        torch.save(output, arguments.save)
    print(json.dumps(result))


def measure_rescale_child(arguments: argparse.Namespace) -> None:
    """One rescaling direction on one full-size image, in this process: prints the fastest seconds of the
    direction alone and the peak RSS."""
    run = rescale_runner(arguments.path, arguments.model)
    hr = load_input(arguments.input)
    run(hr[..., : 4 * WARM_UP_SIDE, : 4 * WARM_UP_SIDE])
    best = min(run(hr) for _ in range(arguments.repeats))
    print(json.dumps({"seconds": best, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def batch_seconds(command: list[str], photos: list[Path], folder: Path) -> dict[str, float]:
    """A real batch, `flowsr upscale A B -o FOLDER`: the first output's seconds from process start (what
    a user waits for: imports, model load, first image) and the second's after it, from the outputs'
    modification times (each is renamed into place when complete)."""
    started = time.time()
    subprocess.run([*command, *map(str, photos), "-o", str(folder), "--quiet"], check=True, capture_output=True)
    done = sorted(path.stat().st_mtime for path in folder.iterdir())
    return {"first": done[0] - started, "second": done[1] - done[0]}


def child(*arguments: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run this script in a child process with ``arguments`` (and ``env`` added to the environment); its JSON
    result."""
    environment = None if env is None else {**os.environ, **env}
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        raise SystemExit(f"benchmark child {arguments} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def matmul_gflops(side: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul GFLOP/s with torch's threads: the best of ``repeats`` side^3 products."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * side**3 / best / 1e9


def _timed(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def command_seconds(command: list[str], repeats: int = 3) -> float:
    """The fastest wall time of a command, process start to exit."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        best = min(best, time.perf_counter() - started)
    return best


def parse_arguments() -> argparse.Namespace:
    """Command-line options (the child modes are for this script's own subprocesses)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="linf-lp",
        help=f"a LINF-LP model (default: the default model); --model, --compare, --rescale also take {PAPER_MODELS}",
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument("--scales", nargs="+", type=float, default=[2.0, 3.5, 4.0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per figure (the fastest counts)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--compare", nargs="*", help="models of the per-model x4 table (default: the bundled flows; none: no table)"
    )
    parser.add_argument("--compare-size", type=int, default=256, help="input side of the per-model table")
    parser.add_argument("--only-models", action="store_true", help="measure the per-model tables only")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16"],
        help="precisions of the per-model table (first: baseline); PRECISION+compile also runs with --compile",
    )
    parser.add_argument("--rescale", nargs="+", default=[], help="image rescaling models to time both ways")
    parser.add_argument("--rescale-size", type=int, default=512, help="full-size side of the rescaling table")
    parser.add_argument(
        "--backends", type=int, metavar="SIDE", help="time --model x4 on a SIDE² input with backend torch and onnx"
    )
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="torch", choices=MODEL_BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--warm-up-whole", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, default=4.0, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help="precision of the flowsr path (auto, fp32, bf16, fp16)")
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--with-compile",
        action="store_true",
        help="also time the unprojected path with --compile (fp32, cold cache) against the naive path",
    )
    return parser.parse_args()


def speed_rows(arguments: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """Every size x scale on every path, with ratios to bicubic and to the naive path."""
    rows = []
    for side in arguments.sizes:
        image = folder / f"input{side}.png"
        make_input(image, side)
        for scale in arguments.scales:
            results = {}
            for path in UPSCALE_PATHS:
                options = ["--path", path, "--input", str(image), "--scale", str(scale), "--model", arguments.model]
                options += ["--repeats", str(arguments.repeats), "--precision", arguments.precision]
                if path != "bicubic":
                    options += ["--save", str(folder / f"{path}.pt")]
                if path == "unprojected" or (path == "flowsr" and (side, scale) == TARGET):
                    options.append("--count-flops")
                results[path] = child(*options)
            difference = (torch.load(folder / "unprojected.pt") - torch.load(folder / "naive.pt")).abs().max().item()
            flowsr, fp32, unprojected, naive, bicubic = (results[path] for path in UPSCALE_PATHS)
            output_mp = (side * scale) ** 2 / 1e6
            row = {
                "input": side,
                "scale": scale,
                "seconds": flowsr["seconds"],
                "seconds_per_input_mp": flowsr["seconds"] / (side * side / 1e6),
                "output_mp_per_second": output_mp / flowsr["seconds"],
                "peak_rss_mb": flowsr["peak_rss"] / 2**20,
                "times_bicubic": flowsr["seconds"] / bicubic["seconds"],
                "fp32_seconds": fp32["seconds"],
                "speedup_over_fp32": fp32["seconds"] / flowsr["seconds"],
                "bicubic_peak_rss_mb": bicubic["peak_rss"] / 2**20,
                "naive_seconds": naive["seconds"],
                "naive_seconds_per_input_mp": naive["seconds"] / (side * side / 1e6),
                "naive_peak_rss_mb": naive["peak_rss"] / 2**20,
                "unprojected_seconds": unprojected["seconds"],
                "projection_cost": fp32["seconds"] / unprojected["seconds"] - 1,
                "speedup_over_naive": naive["seconds"] / unprojected["seconds"],
                "max_abs_difference_to_naive": difference,
                "flops": flowsr.get("flops"),
                "unprojected_flops": unprojected["flops"],
            }
            rows.append(row)
            print(
                f"{side:>5}² {scale:>5g} {row['seconds_per_input_mp']:>9.2f} {row['output_mp_per_second']:>8.3f} "
                f"{row['peak_rss_mb']:>8.0f} {row['times_bicubic']:>8.1f} {row['speedup_over_fp32']:>7.2f} "
                f"{row['naive_seconds_per_input_mp']:>9.2f} "
                f"{row['naive_peak_rss_mb']:>8.0f} {row['speedup_over_naive']:>8.2f} {difference:>9.1e} "
                f"{row['projection_cost']:>8.1%}",
                flush=True,
            )
            if arguments.with_compile:
                row.update(compiled_unprojected(arguments, image, scale, folder, unprojected, naive))
    return rows


def compiled_unprojected(
    arguments: argparse.Namespace,
    image: Path,
    scale: float,
    folder: Path,
    eager: dict[str, Any],
    naive: dict[str, Any],
) -> dict[str, Any]:
    """The unprojected path again with ``--compile`` (float32, from an empty compile cache) against the naive
    path of the same row (its time and saved output) and the eager unprojected path's time; printed."""
    options = ["--path", "unprojected", "--input", str(image), "--scale", str(scale), "--model", arguments.model]
    options += ["--repeats", str(arguments.repeats), "--save", str(folder / "compiled.pt"), "--compile"]
    cache = folder / f"inductor-unprojected-{image.stem}-{scale:g}"
    compiled = child(*options, env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})
    difference = (torch.load(folder / "compiled.pt") - torch.load(folder / "naive.pt")).abs().max().item()
    figures = {
        "compiled_unprojected_seconds": compiled["seconds"],
        "compiled_speedup_over_naive": naive["seconds"] / compiled["seconds"],
        "compiled_speedup_over_eager": eager["seconds"] / compiled["seconds"],
        "compiled_max_abs_difference_to_naive": difference,
        "compile_seconds": compiled["warm_up_seconds"] - eager["warm_up_seconds"],
    }
    print(
        f"{'':>13}the unprojected path with --compile (fp32): {figures['compiled_speedup_over_naive']:.2f}x the "
        f"naive path ({figures['compiled_speedup_over_eager']:.2f}x eager), max diff {difference:.1e}, "
        f"cold compile {figures['compile_seconds']:.1f} s",
        flush=True,
    )
    return figures


def compared_models(requested: list[str] | None) -> list[str]:
    """The per-model table's models: those asked for, else the :data:`COMPARED_MODELS` the hub knows."""
    if requested:
        return requested
    hub = Hub(Settings())
    return [name for name in COMPARED_MODELS if hub.find(name) is not None]


def model_rows(arguments: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """Each compared model upscaling one ``--compare-size`` input x4 as `flowsr upscale` runs it (its own
    default prior and temperature, consistency auto) in each of ``--precisions``, fastest of ``--repeats``: as
    a ratio to the first model's first precision, and the model's first precision over this one (speedup).
    A ``PRECISION+compile`` entry runs with ``--compile`` on an empty torch.compile cache, so its warm-up (the
    first, small image) includes a cold compile; set against the same precision uncompiled, that gives the
    compile's cost and after how many images of this size it has paid for itself."""
    side = arguments.compare_size
    image = folder / f"compare{side}.png"
    make_input(image, side)
    rows: list[dict[str, Any]] = []
    first = arguments.precisions[0]
    print(
        f"x4 of a {side}² input: {'model':<12} {'prec':<13} {'s/in MP':>9} {'outMP/s':>8} {'RSS MB':>8} "
        f"{'x first':>8} {'speedup':>8} {'warm-up s':>9}"
    )
    for model in compared_models(arguments.compare):
        baseline: float | None = None
        measured: dict[str, dict[str, Any]] = {}
        for entry in arguments.precisions:
            precision, compiled = entry.removesuffix(COMPILED), entry.endswith(COMPILED)
            options = ["--path", "flowsr", "--input", str(image), "--scale", "4", "--model", model]
            options += ["--precision", precision, "--repeats", str(arguments.repeats)]
            cache = folder / f"inductor-{Path(model).stem}-{entry}"
            if compiled:
                result = child(*options, "--compile", env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})
            else:
                result = child(*options)
            measured[entry] = result
            seconds_per_mp = result["seconds"] / (side * side / 1e6)
            baseline = baseline or seconds_per_mp
            row = {
                "model": model,
                "precision": entry,
                "input": side,
                "scale": 4.0,
                "seconds_per_input_mp": seconds_per_mp,
                "output_mp_per_second": (4 * side) ** 2 / 1e6 / result["seconds"],
                "peak_rss_mb": result["peak_rss"] / 2**20,
                "times_first": seconds_per_mp / (rows[0]["seconds_per_input_mp"] if rows else seconds_per_mp),
                f"speedup_over_{first}": baseline / seconds_per_mp,
                "warm_up_seconds": result["warm_up_seconds"],
            }
            rows.append(row)
            print(
                f"{'':>19}{Path(model).stem:<12} {entry:<13} {seconds_per_mp:>9.2f} "
                f"{row['output_mp_per_second']:>8.3f} {row['peak_rss_mb']:>8.0f} {row['times_first']:>8.2f} "
                f"{baseline / seconds_per_mp:>8.2f} {result['warm_up_seconds']:>9.2f}",
                flush=True,
            )
            row["guarded_tiles"] = result["guarded_tiles"]
            if result["guarded_tiles"]:
                print(f"{'':>32}the guard re-sampled {result['guarded_tiles']} exploding tile(s) in the timed runs: "
                      "this row times the repairs too, not a speed figure", flush=True)  # fmt: skip
            if compiled and precision in measured:
                row.update(compile_cost(measured[precision], result))
                print(f"{'':>32}{entry}: compile {row['compile_seconds']:.1f} s, then {row['gain_seconds']:.2f} s "
                      f"less per image than {precision}: {row['break_even']}", flush=True)  # fmt: skip
    return rows


def compile_cost(eager: dict[str, Any], compiled: dict[str, Any]) -> dict[str, Any]:
    """What ``--compile`` costs (its warm-up over the eager one's) and gains per image (eager seconds over
    compiled), and after how many images it has paid for itself."""
    cost = compiled["warm_up_seconds"] - eager["warm_up_seconds"]
    gain = eager["seconds"] - compiled["seconds"]
    images = math.ceil(cost / gain) if gain > 0 else None
    verdict = f"pays for itself after {images} images" if images is not None else "never pays for itself"
    return {"compile_seconds": cost, "gain_seconds": gain, "break_even_images": images, "break_even": verdict}


def _label(model: str) -> str:
    """A short name for a model: its file's stem, or its folder's name for a training run's model.safetensors."""
    path = Path(model)
    return path.parent.name if path.name == "model.safetensors" and path.parent.name else path.stem


def rescale_rows(arguments: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """Each ``--rescale`` model shrinking and restoring one ``--rescale-size`` image, and bicubic-down +
    ``--model``-up of the same image: seconds per full-size megapixel, peak RSS, ratio to the baseline."""
    side = arguments.rescale_size
    image = folder / f"rescale{side}.png"
    make_input(image, side)
    megapixels = side * side / 1e6
    rows: list[dict[str, Any]] = []
    print(f"rescaling a {side}² image: {'model':<22} {'direction':<10} {'s/full MP':>9} {'RSS MB':>8} {'x SR up':>8}")
    for model in [arguments.model, *arguments.rescale]:
        is_baseline = model == arguments.model
        for direction in ("up",) if is_baseline else ("down", "up"):
            if is_baseline:
                lr = folder / f"rescale{side}-bicubic-lr.png"
                make_input(lr, side // 4)
                options = ["--path", "flowsr", "--input", str(lr), "--scale", "4", "--model", model]
            else:
                options = ["--path", f"rescale-{direction}", "--input", str(image), "--model", model]
            result = child(*options, "--repeats", str(arguments.repeats))
            row = {
                "model": model if not is_baseline else f"bicubic down, {model} x4 up",
                "direction": direction,
                "full_size": side,
                "seconds_per_full_mp": result["seconds"] / megapixels,
                "peak_rss_mb": result["peak_rss"] / 2**20,
            }
            baseline = rows[0]["seconds_per_full_mp"] if rows else row["seconds_per_full_mp"]
            row["times_sr_up"] = row["seconds_per_full_mp"] / baseline
            rows.append(row)
            print(
                f"{'':>25}{_label(row['model'])[:22]:<22} {direction:<10} {row['seconds_per_full_mp']:>9.2f} "
                f"{row['peak_rss_mb']:>8.0f} {row['times_sr_up']:>8.2f}",
                flush=True,
            )
    return rows


def backend_rows(arguments: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """``--model`` upscaling one ``--backends`` input x4 with each backend, fastest of ``--repeats`` after a warm-up
    on the whole input, as a speed-up over torch measured in the same run."""
    side = arguments.backends
    image = folder / f"backends{side}.png"
    make_input(image, side)
    rows: list[dict[str, Any]] = []
    print(f"x4 of a {side}² input, {arguments.model}: {'backend':<8} {'seconds':>8} {'RSS MB':>8} {'speed-up':>8}")
    for backend in MODEL_BACKENDS:
        options = ["--path", "unprojected", "--input", str(image), "--scale", "4", "--model", arguments.model]
        result = child(*options, "--backend", backend, "--warm-up-whole", "--repeats", str(arguments.repeats))
        seconds = result["seconds"]
        row = {
            "backend": backend,
            "input": side,
            "scale": 4.0,
            "seconds": seconds,
            "peak_rss_mb": result["peak_rss"] / 2**20,
            "speedup_over_torch": (rows[0]["seconds"] if rows else seconds) / seconds,
        }
        rows.append(row)
        print(f"{'':>30}{backend:<8} {seconds:>8.3f} {row['peak_rss_mb']:>8.0f} {row['speedup_over_torch']:>8.2f}",
              flush=True)  # fmt: skip
    return rows


def main() -> None:
    """Measure everything and print the table (optionally write JSON)."""
    arguments = parse_arguments()
    if arguments.path is not None:
        return measure_child(arguments)
    report: dict[str, Any] = {"model": arguments.model, "threads": torch.get_num_threads()}
    print(f"model {arguments.model}, CPU, {report['threads']} torch threads")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        arguments.model = materialise(arguments.model, folder)
        arguments.compare = None if arguments.compare is None else [materialise(m, folder) for m in arguments.compare]
        arguments.rescale = [materialise(model, folder) for model in arguments.rescale]
        if not arguments.only_models:
            report.update(default_model_figures(arguments, folder))
        if arguments.compare != []:
            report["models"] = model_rows(arguments, folder)
        if arguments.rescale:
            report["rescaling"] = rescale_rows(arguments, folder)
        if arguments.backends is not None:
            report["backends"] = backend_rows(arguments, folder)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")


def default_model_figures(arguments: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """The ``--model``'s speed table against its baselines, its FLOP efficiency, a real batch, cold start and
    ``flowsr --help``."""
    report: dict[str, Any] = {}
    print(
        f"{'input':>6} {'scale':>5} {'s/in MP':>9} {'outMP/s':>8} {'RSS MB':>8} {'x bicub':>8} {'x fp32':>7} "
        f"{'naive s/MP':>9} {'naiveRSS':>8} {'speedup':>8} {'max diff':>9} {'project':>8}"
    )
    report["rows"] = rows = speed_rows(arguments, folder)
    report["matmul_gflops"] = peak = matmul_gflops()
    target = next((row for row in rows if row["flops"] is not None), None)
    if target is not None:
        achieved = target["flops"] / target["seconds"] / 1e9
        report["model_gflops"], report["efficiency"] = achieved, achieved / peak
        print(f"model at {TARGET[0]}² x{TARGET[1]:g}: {achieved:.1f} GFLOP/s of {peak:.1f} measured matmul "
              f"GFLOP/s = {achieved / peak:.0%} efficiency")  # fmt: skip
    for row in rows:
        row["fp32_floor_seconds"] = floor = row["unprojected_flops"] / (peak * 1e9)
        row["most_over_naive"] = row["naive_seconds"] / floor
        print(f"{row['input']}² x{row['scale']:g}: the unprojected path's {row['unprojected_flops'] / 1e9:.0f} GFLOP "
              f"take >= {floor:.2f} s at that matmul speed, so no path doing them beats the naive one by more "
              f"than {row['most_over_naive']:.2f}x (reached: {row['speedup_over_naive']:.2f}x)")  # fmt: skip
    photos = [folder / "batch1.png", folder / "batch2.png"]
    for index, photo in enumerate(photos):
        make_input(photo, 256, photo_index=index)
    flowsr = [sys.executable, "-m", "flowsr_cli"]
    upscale = [*flowsr, "upscale", "--model", arguments.model, "--scale", "4", "--device", "cpu"]
    report["batch"] = batch = batch_seconds(upscale, photos, folder / "batch")
    print(f"batch of two 256² photos x4: first output {batch['first']:.2f} s after process start, second "
          f"{batch['second']:.2f} s later: {batch['first'] / batch['second']:.2f}x")  # fmt: skip
    tiny = folder / "tiny.png"
    make_input(tiny, 32)
    tiny_run = [*upscale, str(tiny), "--quiet", "--overwrite", "-o", str(folder / "tiny-out.png")]
    report["cold_start_seconds"] = command_seconds(tiny_run)
    report["help_seconds"] = command_seconds([*flowsr, "--help"])
    print(f"cold start (flowsr upscale of a 32² image, process start to exit): {report['cold_start_seconds']:.2f} s")
    print(f"flowsr --help: {report['help_seconds']:.2f} s")
    return report


if __name__ == "__main__":
    main()
