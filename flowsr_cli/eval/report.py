"""`flowsr eval` results as JSON, CSV and Markdown (one row per dataset x scale x setting); `flowsr rescale eval`'s
with the same writers (one row per dataset x scale x method)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Protocol

from flowsr_cli import __version__
from flowsr_cli.eval.evaluation import PROTOCOL, Result, Skip
from flowsr_cli.eval.rescale_evaluation import RescaleResult

COLUMNS = (
    "dataset", "scale", "model", "prior", "temperature", "consistency", "runs", "images", "skipped", "psnr_y",
    "psnr_rgb", "ssim", "lpips", "lr_psnr", "grid", "colour_shift", "inf_rate", "diversity", "seconds",
)  # fmt: skip

HIGHER_IS_BETTER = {
    "psnr_y": True, "psnr_rgb": True, "ssim": True, "lr_psnr": True, "lpips": False, "colour_shift": False,
    "inf_rate": False,
}  # fmt: skip
"""The scores with a best value per table row; the grid measure has none (1.0 is the photo's)."""


class Row(Protocol):
    """A result row: :class:`Result` or :class:`RescaleResult`."""

    def as_dict(self) -> dict[str, object]:
        """The row as plain values."""
        ...


def to_json(
    results: Sequence[Row],
    settings: dict[str, object],
    skipped: Sequence[Skip],
    protocol: Mapping[str, object] = PROTOCOL,
) -> str:
    """The JSON document: version, ``protocol`` (with the run's ``settings``: seed, runs, per-model projection and
    grid period), the result rows and the files left out (with why, and at which scales)."""
    document = {
        "flowsr_version": __version__,
        "protocol": {**protocol, **settings},
        "results": [result.as_dict() for result in results],
        "skipped": [skip.as_dict() for skip in skipped],
    }
    return json.dumps(document, indent=2, allow_nan=True) + "\n"


def to_csv(results: Sequence[Row], columns: Sequence[str] = COLUMNS) -> str:
    """One CSV line per result, with a header of ``columns``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for result in results:
        writer.writerow(result.as_dict())
    return buffer.getvalue()


def _cell(value: object, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(results: Sequence[Result], labels: Sequence[str]) -> str:
    """A Markdown table: one row per result, the setting named by its label (``projected``: consistency on)."""
    names = (
        "dataset", "scale", "setting", "images", "skipped", "PSNR-Y", "PSNR-RGB", "SSIM", "LPIPS", "LR-PSNR",
        "grid ×", "colour shift", "inf %", "diversity", "seconds",
    )  # fmt: skip
    rows = [
        [
            result.dataset,
            f"×{result.scale:g}",
            label,
            str(result.images),
            str(result.skipped),
            _cell(result.psnr_y, 2),
            _cell(result.psnr_rgb, 2),
            _cell(result.ssim, 4),
            _cell(result.lpips, 4),
            _cell(result.lr_psnr, 2),
            _cell(result.grid, 2),
            _cell(result.colour_shift, 2),
            _cell(100 * result.inf_rate, 1),
            _cell(result.diversity, 4),
            _cell(result.seconds, 1),
        ]
        for result, label in zip(results, labels)
    ]
    return _table(names, rows)


def to_rescale_markdown(results: Sequence[RescaleResult]) -> str:
    """A Markdown table of `flowsr rescale eval`: one row per result, the method named by its label."""
    names = (
        "dataset", "scale", "down & up", "images", "skipped", "PSNR-Y", "SSIM", "LPIPS", "LR vs bicubic", "seconds",
    )  # fmt: skip
    rows = [
        [
            result.dataset,
            f"×{result.scale}",
            result.label,
            str(result.images),
            str(result.skipped),
            _cell(result.psnr_y, 2),
            _cell(result.ssim, 4),
            _cell(result.lpips, 4),
            _cell(result.lr_vs_bicubic_psnr, 2),
            _cell(result.seconds, 1),
        ]
        for result in results
    ]
    return _table(names, rows)


def _table(names: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with the header ``names``."""
    header = "| " + " | ".join(names) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    lines.extend("| " + " | ".join(cells) + " |" for cells in rows)
    return "\n".join(lines) + "\n"
