"""A labelled side-by-side crop for the README: bicubic | LINF at temperature 0.8 | LINF-LP | HR.

The LR input is made from the HR image with the evaluation protocol's bicubic, the outputs come from
the same engine as `flowsr upscale`, and each panel is the same crop enlarged with nearest neighbour.

Usage: python scripts/visual_comparison.py HR_IMAGE OUT.png --scale 4 --crop X,Y,SIZE [--zoom 2]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from flowsr_cli.config import Settings
from flowsr_cli.engine.pipeline import pixels_to_tensor
from flowsr_cli.eval import metrics
from flowsr_cli.eval.evaluation import super_resolve
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from flowsr_cli.hub.catalog import Hub
from flowsr_cli.io.reading import read_image
from flowsr_cli.io.sizing import Size

PANELS = (
    ("bicubic", UpscalerRequest("bicubic", device="cpu", tile=0)),
    ("LINF temperature 0.8", UpscalerRequest("linf", device="cpu", precision="fp32", temperature=0.8)),
    ("LINF-LP", UpscalerRequest("linf-lp", device="cpu", precision="fp32")),
)
LABEL_HEIGHT = 18


def panel(image: torch.Tensor, crop: tuple[int, int, int], zoom: int, label: str) -> Image.Image:
    """The crop of a (1, 3, H, W) image in [0, 1], enlarged ``zoom`` times, with a caption strip."""
    x, y, side = crop
    pixels = image[0, :, y : y + side, x : x + side].clamp(0, 1).permute(1, 2, 0).numpy()
    picture = Image.fromarray(np.round(pixels * 255).astype(np.uint8)).resize(
        (side * zoom, side * zoom), Image.Resampling.NEAREST
    )
    framed = Image.new("RGB", (picture.width, picture.height + LABEL_HEIGHT), "white")
    framed.paste(picture, (0, LABEL_HEIGHT))
    ImageDraw.Draw(framed).text((4, 3), label, fill="black")
    return framed


def main() -> None:
    """Upscale the LR version of one HR image with each panel's model and write the strip."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hr", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--crop", required=True, help="X,Y,SIZE of the square crop in HR pixels")
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    x, y, side = (int(value) for value in arguments.crop.split(","))

    source = read_image(arguments.hr, max_pixels=1 << 30)
    hr = pixels_to_tensor(source.pixels)[:, :3].contiguous()
    hr, lr = metrics.make_lr(hr, arguments.scale)
    size = Size(hr.shape[-1], hr.shape[-2])
    hub = Hub(Settings())
    panels = []
    for label, request in PANELS:
        upscaler = create_upscaler(dataclasses.replace(request, hub=hub))
        output = super_resolve(upscaler, lr, size, arguments.seed)
        panels.append(panel(output, (x, y, side), arguments.zoom, label))
    panels.append(panel(hr, (x, y, side), arguments.zoom, "HR"))
    gap = 4
    strip = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height), "white")
    for index, picture in enumerate(panels):
        strip.paste(picture, (index * (picture.width + gap), 0))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(arguments.out, optimize=True)
    print(f"wrote {arguments.out} ({strip.width}x{strip.height})")


if __name__ == "__main__":
    main()
