"""Peak memory of `flowsr upscale` as the input grows: the tiled engine must keep it nearly flat.

Runs the real CLI in a subprocess per input size (CPU, x4 by default) with the default model
(`--model` takes any model name or file, or a paper-size model with random weights, `PAPER_MODELS`: memory does not
depend on training) and prints the peak resident memory of each run next to the ratio to the 512^2 run.

    python scripts/bench_memory.py                       # linf-lp; 256, 512, 1024, 2048
    python scripts/bench_memory.py --model paper-random --sizes 256 512 --json memory.json
    python scripts/bench_memory.py --rescale x4.safetensors --photos 1000x750 4000x3000   # rescale down, then up

With ``--rescale MODEL`` (an image rescaling model) each photo (WIDTHxHEIGHT) is shrunk by `flowsr rescale down`
and restored by `flowsr rescale up`, each in its own process, and both peaks are printed next to the ratio to the
first photo's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO.parent / "shared" / "data" / "train" / "debian_photos"

PEAK_OF_CHILD = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    "sys.exit(code)\n"
)


def paper_spec(name: str) -> dict[str, Any]:
    """The spec of the paper-size model :data:`PAPER_MODELS` names."""
    from flowsr_cli.train.recipe import ARCHITECTURES, rescaler_spec

    linf = ARCHITECTURES["linf-edsr"]
    original_linf = {"name": "linf", "args": {**linf["args"], "query_geometry": "original"}}
    original_latent = {"name": "lp-latent-original", "args": {"in_chans": 27, "dim": 64, "depth": 3}}
    specs = {
        "paper-random": linf,
        "paper-lp-random": {"name": "linf-lp", "args": {"flow": linf, "latent": {"name": "lp-latent", "args": {}}}},
        "paper-lp-original-random": {
            "name": "linf-lp-original",
            "args": {"flow": original_linf, "latent": original_latent},
        },
        "paper-hcflow-random": ARCHITECTURES["hcflow"],
        "paper-rescale-x2-random": rescaler_spec("hcflow-rescale", 2),
        "paper-rescale-x4-random": rescaler_spec("hcflow-rescale", 4),
    }
    return specs[name]


PAPER_MODELS = (
    "paper-random",
    "paper-lp-random",
    "paper-lp-original-random",
    "paper-hcflow-random",
    "paper-hcflow-original-random",
    "paper-rescale-x2-random",
    "paper-rescale-x4-random",
)
"""Paper-size models with seeded random weights (enough for speed and memory): the EDSR-baseline LINF 3x3; that
LINF with the learned prior's paper-size latent module (4.58 M parameters), in flowsr's variant and in the original
code's (``linf-lp-original``, as imported checkpoints run); the paper's x4 HCFlow, also as imported from an
original-layout checkpoint (:data:`ORIGINAL_HCFLOW_X4`, its ``.pth`` kept beside it for the naive path); the
paper-size HCFlow image rescaling models at x2 and x4."""

ORIGINAL_HCFLOW_X4 = {
    "L": 2,
    "K": [26, 26],
    "after": [13, 13],
    "hidden": 64,
    "split_opt": {"RRDB_nf": 64, "RRDB_gc": 32, "RRDB_nb": [7, 7], "hidden_channels": 64},
}
"""The released SR_DF2K_X4_HCFlow's sizes in the original code's terms (13 + 13 steps per level, RRDB 7 + 7):
flowsr's ``hcflow`` architecture once imported."""


def make_model(path: Path, name: str = "paper-random") -> None:
    """One of :data:`PAPER_MODELS`, written to ``path``."""
    import torch

    from flowsr_cli.families.model_file import save_model
    from flowsr_cli.families.registry import make

    torch.manual_seed(0)
    if name == "paper-hcflow-original-random":
        from flowsr_cli.families.importing import convert_original

        torch.save(original_hcflow(seed=0).state_dict(), path.with_suffix(".pth"))
        save_model(convert_original(path.with_suffix(".pth")), path)
        return
    save_model(make(paper_spec(name)).eval(), path)


def original_hcflow(seed: int) -> Any:
    """The test suite's independent re-implementation of the original HCFlow network at the paper's x4 size, with
    tame seeded random weights (``tests/families/hcflow/original_hcflow.py``; imported from the repository)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.families.hcflow.original_hcflow import tamed_original

    return tamed_original(**ORIGINAL_HCFLOW_X4, seed=seed)


def materialise(model: str, folder: Path) -> str:
    """``model`` as `flowsr` takes it: one of :data:`PAPER_MODELS` written into ``folder`` (once), else unchanged."""
    if model not in PAPER_MODELS:
        return model
    path = folder / f"{model}.safetensors"
    if not path.exists():
        make_model(path, model)
    return str(path)


def make_input(path: Path, side: int, photo_index: int = 0) -> None:
    """A natural photo (the ``photo_index``-th) resized to side x side (random pixels if the shared
    photos are absent)."""
    photos = sorted(PHOTO.glob("*.jpg")) if PHOTO.is_dir() else []
    if photos:
        with Image.open(photos[photo_index % len(photos)]) as photo:
            photo.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(path)
    else:
        pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)


def peak_rss(command: list[str]) -> tuple[int, float]:
    """Peak resident bytes and wall seconds of one command run in its own process."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"flowsr failed:\n{result.stderr}")
    return int(result.stdout.strip().splitlines()[-1]), seconds


def rescale_rows(model: str, scale: int, photos: list[str], tile: str, work: Path) -> list[dict[str, object]]:
    """Peak RSS and seconds of `rescale down` (by ``scale``, the model's) and `rescale up` of each photo
    (WIDTHxHEIGHT)."""
    rows: list[dict[str, object]] = []
    flowsr = [sys.executable, "-m", "flowsr_cli", "rescale"]
    for photo in photos:
        width, height = (int(side) for side in photo.lower().split("x"))
        source = work / f"photo{photo}.png"
        make_input(source, max(width, height))
        with Image.open(source) as image:
            image.crop((0, 0, width, height)).save(source)
        lr, restored = work / f"photo{photo}_lr.png", work / f"photo{photo}_up.png"
        steps = {
            "down": [*flowsr, "down", str(source), "--model", model, "--scale", str(scale), "-o", str(lr)],
            "up": [*flowsr, "up", str(lr), "-o", str(restored), "--tile", tile],
        }
        for direction, command in steps.items():
            peak, seconds = peak_rss([*command, "--device", "cpu", "--quiet"])
            rows.append({"photo": photo, "direction": direction, "seconds": round(seconds, 1), "peak": peak})
            print(f"{photo} {direction} done: {peak / 2**20:.0f} MB in {seconds:.0f} s", file=sys.stderr, flush=True)
    print(f"{'photo':>10} {'direction':>9} {'seconds':>8} {'peak RSS MB':>12} {'vs first':>9}")
    for row in rows:
        first = next(other for other in rows if other["direction"] == row["direction"])
        row["peak_mb"] = round(int(row["peak"]) / 2**20)
        row["ratio_to_first"] = round(int(row["peak"]) / int(first["peak"]), 2)
        print(
            f"{row['photo']:>10} {row['direction']:>9} {row['seconds']:>8} {row['peak_mb']:>12} "
            f"{row['ratio_to_first']:>8}x"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--tile", default="auto")
    parser.add_argument("--model", default="linf-lp", help=f"a model name or file, or one of {', '.join(PAPER_MODELS)}")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--rescale", help="an image rescaling model of --scale: measure rescale down and up instead")
    parser.add_argument("--photos", nargs="+", default=["1000x750", "4000x3000"], help="WIDTHxHEIGHT (--rescale)")
    args = parser.parse_args()
    if args.rescale is not None:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            rows = rescale_rows(materialise(args.rescale, folder), int(args.scale), args.photos, args.tile, folder)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = materialise(args.model, work)
        for side in args.sizes:
            make_input(work / f"in{side}.png", side)
            command = [
                sys.executable, "-m", "flowsr_cli", "upscale", str(work / f"in{side}.png"),
                "--model", model, "--scale", str(args.scale), "--device", "cpu",
                "--tile", args.tile, "--temperature", "0.8", "-o", str(work / f"out{side}.png"), "--quiet",
            ]  # fmt: skip
            peak, seconds = peak_rss(command)
            with Image.open(work / f"out{side}.png") as output:
                megapixels = output.width * output.height / 1e6
            rows.append({"input": side, "output_mp": round(megapixels, 2), "seconds": round(seconds, 1), "peak": peak})
            print(f"{side}^2 done: {peak / 2**20:.0f} MB in {seconds:.0f} s", file=sys.stderr, flush=True)

    reference = next((row["peak"] for row in rows if row["input"] == 512), rows[0]["peak"])
    print(f"{'input':>8} {'output MP':>10} {'seconds':>8} {'peak RSS MB':>12} {'vs 512^2':>9}")
    for row in rows:
        row["peak_mb"] = round(row["peak"] / 2**20)
        row["ratio_to_512"] = round(row["peak"] / reference, 2)
        print(
            f"{row['input']:>7}² {row['output_mp']:>10} {row['seconds']:>8} {row['peak_mb']:>12} "
            f"{row['ratio_to_512']:>8}x"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
