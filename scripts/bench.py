"""Upscaling speed on this machine: seconds per input megapixel and output megapixels per second of
named models, each next to bicubic measured in the same run, through the same engine as `flowsr upscale`
(default settings: automatic tiling and precision).

    python scripts/bench.py                                   # linf-lp, x2 x3.5 x4, 256^2 and 512^2
    python scripts/bench.py --models linf-lp linf --sizes 512 --scales 4 --json speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_memory import make_input

from flowsr_cli.config import Settings
from flowsr_cli.engine import Upscaler, UpscalerRequest, create_upscaler
from flowsr_cli.evaluation import super_resolve
from flowsr_cli.hub import Hub
from flowsr_cli.imageio import read_image
from flowsr_cli.pipeline import pixels_to_tensor
from flowsr_cli.sizing import Size


def seconds_per_run(upscaler: Upscaler, lr: torch.Tensor, size: Size, repeats: int) -> float:
    """The fastest of ``repeats`` timed upscales, after one untimed warm-up."""
    super_resolve(upscaler, lr, size, 0)
    best = float("inf")
    for repeat in range(repeats):
        started = time.perf_counter()
        super_resolve(upscaler, lr, size, repeat)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    """Time every model x size x scale and print a table (optionally JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["linf-lp"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--scales", nargs="+", type=float, default=[2.0, 3.5, 4.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()

    hub = Hub(Settings())
    upscalers = {name: create_upscaler(UpscalerRequest(name, device="cpu", hub=hub)) for name in arguments.models}
    upscalers["bicubic"] = create_upscaler(UpscalerRequest("bicubic", device="cpu"))
    rows = []
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'model':<10} {'input':>6} {'scale':>5} {'s/input MP':>11} {'out MP/s':>9} {'x bicubic':>10}")
    with tempfile.TemporaryDirectory() as folder:
        for side in arguments.sizes:
            path = Path(folder) / f"input{side}.png"
            make_input(path, side)
            lr = pixels_to_tensor(read_image(path, max_pixels=1 << 30).pixels)[:, :3].contiguous()
            for scale in arguments.scales:
                size = Size(round(side * scale), round(side * scale))
                timings = {name: seconds_per_run(up, lr, size, arguments.repeats) for name, up in upscalers.items()}
                for name, seconds in timings.items():
                    row = {
                        "model": name,
                        "input": side,
                        "scale": scale,
                        "seconds_per_input_mp": seconds / (side * side / 1e6),
                        "output_mp_per_second": size.width * size.height / 1e6 / seconds,
                        "times_bicubic": seconds / timings["bicubic"],
                    }
                    rows.append(row)
                    print(
                        f"{name:<10} {side:>5}² {scale:>5g} {row['seconds_per_input_mp']:>11.2f} "
                        f"{row['output_mp_per_second']:>9.3f} {row['times_bicubic']:>10.1f}"
                    )
    if arguments.json is not None:
        arguments.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
