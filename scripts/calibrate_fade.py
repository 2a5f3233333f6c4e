"""Calibrate a LINF-LP model's fade beyond its prior's training range, on training photos only.

The learned prior is trained at scales 1..FROM (4 by default). Beyond that it extrapolates, and its
latents carry more detail than the LR can support, so at x8 it loses to the flow's own mode (z = 0).
The fade keeps ``exp(-((s - FROM) / width)^2)`` of the prior's latent at scale s > FROM. This script
renders every candidate width on a fixed sample of *training* photos (every N-th file, shrunk by 2 so
JPEG artefacts fall below the pixel grid, centre crop) at several out-of-range scales, prints the mean
LPIPS of each, picks the width with the lowest mean over all scales, and writes a copy of the model
with that fade in its spec. Outputs are scored as `flowsr upscale` shows them: cleaned of the patch grid
and back-projected onto the LR (`--consistency-iterations`, 10 like `--consistency on`; 0 for neither).
Evaluation sets are never read: pass only training folders.

    python scripts/calibrate_fade.py runs/prior/model.safetensors ../shared/data/train \
        --out runs/prior/faded.safetensors
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from flowsr_cli.engine.consistent import make_consistent
from flowsr_cli.engine.pipeline import rgb_tensor
from flowsr_cli.engine.projection import DEFAULT_ITERATIONS
from flowsr_cli.eval.metrics import LPIPS, make_lr
from flowsr_cli.families.linf.prior import LINFLP, LatentFade
from flowsr_cli.families.model_file import load_model, model_notes, save_model
from flowsr_cli.io.reading import read_image
from flowsr_cli.train.data import find_training_images

NO_FADE = math.inf
"""The width that keeps the whole latent (the model as trained)."""
DOWNSCALE = 2.0
"""How much each sampled photo is shrunk before cropping, unless told otherwise."""


@dataclass(frozen=True)
class Calibration:
    """Mean LPIPS per (width, scale) over the sample; width 0 is the flow's mode, inf no fade."""

    from_scale: float
    scales: list[float]
    widths: list[float]
    mean_lpips: dict[tuple[float, float], float]
    images: int

    def overall(self, width: float) -> float:
        """The mean over all scales of one width's LPIPS."""
        return sum(self.mean_lpips[width, scale] for scale in self.scales) / len(self.scales)

    def best_width(self) -> float:
        """The positive, finite width with the lowest mean LPIPS over all scales."""
        return min((width for width in self.widths if 0 < width < NO_FADE), key=self.overall)


def sample_photos(
    folders: list[Path], every: int, crop: int, start: int = 0, downscale: float = DOWNSCALE
) -> list[torch.Tensor]:
    """Every ``every``-th training image from index ``start`` (sorted by path), RGB in [0, 1], first
    shrunk by ``downscale`` (the protocol's antialiased bicubic, 8-bit) if above 1, then centre-cropped
    to at most crop x crop. Shrinking by 2 puts JPEG blocks and noise below the pixel grid, so the
    references look like clean PNGs (Set5, Set14)."""
    photos = []
    for path in find_training_images(folders)[start::every]:
        colour = rgb_tensor(read_image(path))
        if downscale > 1:
            colour = make_lr(colour, downscale)[1]
        height, width = colour.shape[-2:]
        top, left = max(0, (height - crop) // 2), max(0, (width - crop) // 2)
        photos.append(colour[..., top : top + crop, left : left + crop].contiguous())
    return photos


def fade_gain(from_scale: float, width: float, scale: float) -> float:
    """The gain a width gives at ``scale``; width 0 keeps nothing beyond ``from_scale``, inf everything."""
    if scale <= from_scale or width == NO_FADE:
        return 1.0
    return 0.0 if width == 0 else LatentFade(from_scale, width).gain(scale)


def calibrate(
    model: LINFLP,
    photos: list[torch.Tensor],
    from_scale: float,
    scales: list[float],
    widths: list[float],
    iterations: int = DEFAULT_ITERATIONS,
) -> Calibration:
    """Render each photo at each scale with each width's gain on the unfaded prior's latent; unless
    ``iterations`` is 0, remove its patch grid and back-project it ``iterations`` times onto the LR, as
    ``--consistency on`` does; mean LPIPS."""
    lpips = LPIPS()
    totals = {(width, scale): 0.0 for width in widths for scale in scales}
    for scale in scales:
        for photo in photos:
            hr, lr = make_lr(photo, scale)
            size = (hr.shape[-2], hr.shape[-1])
            with torch.no_grad():
                features = model.encode(lr * 2 - 1)
                conditions = model.conditions(features, size)
                z_hat = model.predict_latent(features, size, conditions=conditions)
                for width in widths:
                    gain = fade_gain(from_scale, width, scale)
                    output = model.render_latent(features, size, z_hat * gain, conditions=conditions)
                    output = ((output + 1) / 2).clamp(0, 1)
                    if iterations:
                        output = make_consistent(output, lr, model.patch_size, iterations)
                    totals[width, scale] += lpips(output, hr).item()
        print(f"x{scale:g}: " + "  ".join(f"{w:g}:{totals[w, scale] / len(photos):.4f}" for w in widths), flush=True)
    means = {key: total / len(photos) for key, total in totals.items()}
    return Calibration(from_scale, scales, widths, means, len(photos))


def write_faded(source: Path, target: Path, fade: LatentFade, note: str) -> None:
    """A copy of the model file at ``source`` with ``fade`` in its spec and ``note`` in its metadata."""
    original = load_model(source)
    if not isinstance(original, LINFLP):
        raise TypeError(f"{source}: not a LINF-LP model")
    save_model(original.with_fade(fade), target, **{**model_notes(source), "fade_calibration": note})


def _floats(text: str) -> list[float]:
    return [float(value) for value in text.split(",")]


def main() -> None:
    """Parse the command line, calibrate, print the table, write the faded model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a LINF-LP model file")
    parser.add_argument("data", type=Path, nargs="+", help="training photo folders (never evaluation sets)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model with the fade")
    parser.add_argument("--from-scale", type=float, default=4.0, help="top of the prior's training range")
    parser.add_argument("--scales", type=_floats, default=[5.0, 6.0, 7.0, 8.0, 10.0, 12.0])
    parser.add_argument("--widths", type=_floats, default=[1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0])
    parser.add_argument("--every", type=int, default=7, help="use every N-th training file")
    parser.add_argument("--start", type=int, default=0, help="index of the first file used (another sample)")
    parser.add_argument(
        "--downscale", type=float, default=DOWNSCALE, help="shrink each photo by this factor first (1: as stored)"
    )
    parser.add_argument("--crop", type=int, default=480, help="centre crop side at most, HR pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--consistency-iterations", type=int, default=DEFAULT_ITERATIONS, help="back-projection steps (0: none)"
    )
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    model = load_model(arguments.model)
    if not isinstance(model, LINFLP):
        parser.error(f"{arguments.model}: not a LINF-LP model")
    model = model.with_fade(None)
    photos = sample_photos(arguments.data, arguments.every, arguments.crop, arguments.start, arguments.downscale)
    widths = [0.0, *arguments.widths, NO_FADE]
    print(f"{len(photos)} training photos; columns: fade width (0 = the flow's mode, inf = no fade)")
    result = calibrate(model, photos, arguments.from_scale, arguments.scales, widths, arguments.consistency_iterations)
    scales = ", ".join(f"x{scale:g}" for scale in result.scales)
    for width in widths:
        print(f"width {width:>4g}: mean LPIPS {result.overall(width):.4f} over {scales}")
    best = result.best_width()
    note = (
        f"width {best:g} from x{arguments.from_scale:g}: mean LPIPS {result.overall(best):.4f} "
        f"(no fade {result.overall(NO_FADE):.4f}, mode {result.overall(0.0):.4f}) on {result.images} training "
        f"photos at {scales} (every {arguments.every}-th from {arguments.start}, shrunk {arguments.downscale:g}x, "
        f"crop {arguments.crop}, {arguments.consistency_iterations} back-projection steps)"
    )
    write_faded(arguments.model, arguments.out, LatentFade(arguments.from_scale, best), note)
    print(f"chose {note}\nwrote {arguments.out}")


if __name__ == "__main__":
    main()
