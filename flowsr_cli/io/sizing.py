"""How big an output is: a scale factor or one fixed side, rounded halves up."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from flowsr_cli.errors import ImageError, UsageError


class Size(NamedTuple):
    """An image size in pixels."""

    width: int
    height: int


def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (``floor(x + 0.5)``), as the CLI contract fixes."""
    return math.floor(value + 0.5)


def format_scale(scale: float) -> str:
    """A scale factor as people write it: 4, 3.5, 2.25."""
    return f"{scale:g}"


@dataclass(frozen=True)
class SizeRequest:
    """What the user asked for: exactly one of a scale factor, an output width or an output height."""

    scale: float | None = None
    width: int | None = None
    height: int | None = None

    @classmethod
    def from_options(cls, scale: float | None, width: int | None, height: int | None) -> SizeRequest:
        """Validate the three mutually exclusive options; a UsageError says what is wrong."""
        options = (("--scale", scale), ("--width", width), ("--height", height))
        given = [name for name, value in options if value is not None]
        if len(given) != 1:
            got = f" (got {' and '.join(given)})" if given else ""
            raise UsageError(f"give exactly one of --scale, --width or --height{got}")
        if scale is not None and not (math.isfinite(scale) and scale >= 1):
            raise UsageError(f"--scale must be a number >= 1, got {scale:g}")
        for name, side in (("--width", width), ("--height", height)):
            if side is not None and side < 1:
                raise UsageError(f"{name} must be a positive number of pixels, got {side}")
        return cls(scale, width, height)

    @property
    def label(self) -> str:
        """The request as it appears in output names: x3.5, w1920 or h1080."""
        if self.scale is not None:
            return "x" + format_scale(self.scale)
        if self.width is not None:
            return f"w{self.width}"
        return f"h{self.height}"

    def target(self, source: Size) -> Size:
        """The output size for an input of ``source`` size; an ImageError if that would shrink it."""
        if self.scale is not None:
            scale = self.scale
        elif self.width is not None:
            scale = self.width / source.width
        else:
            scale = self.height / source.height
        target = Size(
            self.width if self.width is not None else round_half_up(source.width * scale),
            self.height if self.height is not None else round_half_up(source.height * scale),
        )
        if target.width < source.width or target.height < source.height:
            raise ImageError(
                f"the image is {source.width}×{source.height}, larger than the requested "
                f"{target.width}×{target.height}; flowsr only enlarges"
            )
        return target
