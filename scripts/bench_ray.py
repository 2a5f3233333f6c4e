"""Images per second of `flowsr upscale` on a folder with `--backend ray` (1 and 2 workers) against the plain local
path on the same images, measured in the same run, interleaved: each round runs the local path, then ray with 1
worker, then with 2, every run a fresh `flowsr upscale` process writing a fresh output folder (so each pays its
own start-up: importing torch, loading the model, for ray also starting and loading its workers).

The Ray cluster (this machine's CPUs) is started once by this script, as a user starts one with `ray start`; the
runs join it with ``--address``, and the time the cluster took to start is printed apart. The local path uses
torch's threads (one per core); a ray worker reserves one CPU and runs one torch thread.

    python scripts/bench_ray.py                         # 16 images of 64², x2, default model, 3 rounds
    python scripts/bench_ray.py --images 32 --side 96 --rounds 5 --model bicubic
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_memory import make_input

RUNS = (("local", ()), ("ray, 1 worker", ("--workers", "1")), ("ray, 2 workers", ("--workers", "2")))


def parse_arguments() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images in the folder")
    parser.add_argument("--side", type=int, default=64, help="side of each (square) input in pixels")
    parser.add_argument("--scale", default="2", help="upscaling factor")
    parser.add_argument("--model", default="linf-lp", help="model (default: the default model)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (local, ray 1, ray 2)")
    return parser.parse_args()


def make_images(folder: Path, count: int, side: int) -> None:
    """``count`` PNGs of ``side``²: the training photos in turn, each resized (the same every run)."""
    folder.mkdir()
    for index in range(count):
        make_input(folder / f"img{index:03d}.png", side, photo_index=index)


def timed_run(arguments: argparse.Namespace, images: Path, out: Path, extra: tuple[str, ...]) -> float:
    """Seconds one `flowsr upscale` process takes to write every output."""
    command = [sys.executable, "-m", "flowsr_cli", "upscale", str(images), "-s", arguments.scale,
               "-m", arguments.model, "-o", str(out), "-q", *extra]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    if len(list(out.iterdir())) != arguments.images:
        raise SystemExit(f"{out}: not every output was written")
    return seconds


def main() -> None:
    """Start the cluster, run the rounds, print the table."""
    arguments = parse_arguments()
    import ray

    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    cluster_seconds = time.perf_counter() - started
    address = ray.get_runtime_context().gcs_address
    print(f"ray {ray.__version__}, {os.cpu_count()} CPUs; the local cluster started in {cluster_seconds:.1f} s")
    print(f"{arguments.images} images of {arguments.side}², x{arguments.scale}, {arguments.model}, "
          f"{arguments.rounds} rounds (each run a fresh process, start-up included)")  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name, _ in RUNS}
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        make_images(root / "in", arguments.images, arguments.side)
        for round_index in range(arguments.rounds):
            for label, extra in RUNS:
                backend = ("--backend", "ray", "--address", address, *extra) if extra else ("--backend", "torch")
                out = root / f"out-{round_index}-{label.replace(' ', '').replace(',', '-')}"
                seconds[label].append(timed_run(arguments, root / "in", out, backend))
    ray.shutdown()
    local = seconds["local"]
    print(f"{'path':<16} {'median s':>9} {'images/s':>9} {'x local':>8}   (x local: median of per-round ratios)")
    for label, _ in RUNS:
        median = statistics.median(seconds[label])
        ratio = statistics.median(base / value for base, value in zip(local, seconds[label]))
        print(f"{label:<16} {median:>9.2f} {arguments.images / median:>9.2f} {ratio:>8.2f}")


if __name__ == "__main__":
    main()
