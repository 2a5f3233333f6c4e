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


_RAISE_OUTPUT_LIMIT = "raise it with `flowsr config set max_output_pixels N` or FLOWSR_MAX_OUTPUT_PIXELS"


@dataclass(frozen=True)
class SizeRequest:
    """What the user asked for: exactly one of a scale factor, an output width or an output height, made
    ``samples`` times per input. The outputs of one input have at most ``max_output_pixels`` pixels together
    (None: no limit), as all of them are held in memory at once."""

    scale: float | None = None
    width: int | None = None
    height: int | None = None
    samples: int = 1
    max_output_pixels: int | None = None

    @classmethod
    def from_options(
        cls,
        scale: float | None,
        width: int | None,
        height: int | None,
        *,
        samples: int = 1,
        max_output_pixels: int | None = None,
    ) -> SizeRequest:
        """Validate the three mutually exclusive options; a UsageError says what is wrong, also when the output
        of even the smallest image would be above ``max_output_pixels``."""
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
        request = cls(scale, width, height, samples, max_output_pixels)
        if request._above_limit(request._smallest_output()):
            value = format_scale(scale) if scale is not None else width or height
            samples_note = f" for {samples} samples" if samples > 1 else ""
            raise UsageError(
                f"{given[0]} {value}: even the smallest image would give more than the max_output_pixels limit "
                f"of {max_output_pixels:,} pixels{samples_note} ({_RAISE_OUTPUT_LIMIT})"
            )
        return request

    @property
    def label(self) -> str:
        """The request as it appears in output names: x3.5, w1920 or h1080."""
        if self.scale is not None:
            return "x" + format_scale(self.scale)
        if self.width is not None:
            return f"w{self.width}"
        return f"h{self.height}"

    def target(self, source: Size) -> Size:
        """The output size for an input of ``source`` size; an ImageError if that would shrink it, or if its
        samples together would be above ``max_output_pixels``."""
        try:
            target = self._scaled(source)
        except OverflowError:
            raise ImageError(
                f"the {self.label} output of a {source.width}×{source.height} image is too large to compute"
            ) from None
        if target.width < source.width or target.height < source.height:
            raise ImageError(
                f"the image is {source.width}×{source.height}, larger than the requested "
                f"{target.width}×{target.height}; flowsr only enlarges"
            )
        if self._above_limit(target):
            shape = f"{target.width}×{target.height}"
            if self.samples > 1:
                shape = f"{self.samples} samples of {shape}"
            raise ImageError(
                f"the output would be {shape} = {self._pixels(target):,} pixels, above the max_output_pixels "
                f"limit of {self.max_output_pixels:,} ({_RAISE_OUTPUT_LIMIT})"
            )
        return target

    def _scaled(self, source: Size) -> Size:
        if self.scale is not None:
            scale = self.scale
        elif self.width is not None:
            scale = self.width / source.width
        else:
            scale = self.height / source.height
        return Size(
            self.width if self.width is not None else round_half_up(source.width * scale),
            self.height if self.height is not None else round_half_up(source.height * scale),
        )

    def _smallest_output(self) -> Size:
        """The output of the smallest input: 1×1 for a scale, one pixel high (wide) for a width (height)."""
        if self.scale is not None:
            side = round_half_up(self.scale)
            return Size(side, side)
        return Size(self.width or 1, self.height or 1)

    def _pixels(self, size: Size) -> int:
        return size.width * size.height * self.samples

    def _above_limit(self, size: Size) -> bool:
        return self.max_output_pixels is not None and self._pixels(size) > self.max_output_pixels
