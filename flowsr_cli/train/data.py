"""Training data: image folders, random crops at random scales, and a resumable, shardable batch stream.

Everything random in a batch comes from one ``torch.Generator`` seeded with ``row_seed(seed, index)``,
``index`` being the batch's *global* index. A batch is therefore a function of (images, recipe,
batch size, seed, index) alone: it does not depend on the process, DataLoader worker or DDP rank
that makes it, so a run resumes at any step and shards without coordination.

Global indices and optimizer steps (the convention ``BatchStream`` follows): optimizer step ``t`` of
a run with ``world_size`` ranks consumes the global batches ``t*world_size .. t*world_size +
world_size - 1``, one per rank; rank ``r`` trains on global batch ``t*world_size + r``. A
single-process run (world size 1) trains on global batch ``t`` at step ``t``, and ``world_size``
ranks together see, over ``T`` steps, exactly the ``T*world_size`` batches one process sees over
its first ``T*world_size`` steps.

LR synthesis is the project's MATLAB ``imresize`` bicubic (``flowsr_cli.engine.resize``) from the
augmented HR crop to the LR side, clamped and quantised to 8 bits like an LR file would be.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from flowsr_cli.engine.pipeline import pixels_to_tensor
from flowsr_cli.engine.resize import resize
from flowsr_cli.engine.sampling import row_seed
from flowsr_cli.errors import FlowsrError, ImageError, UsageError
from flowsr_cli.io.inputs import walk_images
from flowsr_cli.io.reading import read_image

__all__ = [
    "Batch",
    "BatchStream",
    "CropRecipe",
    "TrainingImages",
    "find_training_images",
    "make_batch",
    "make_loader",
    "to_rgb8",
]

_ROUNDING_SLACK = 1e-9
"""Absorbs float error when the HR side bounds ``lr_size * scale / multiple`` land on an integer."""


@dataclass(frozen=True)
class CropRecipe:
    """How training crops are cut: LR side (or a fixed HR side), scale range, HR side granularity and
    augmentation.

    By default the LR side is ``lr_size`` and the HR crop side ``S`` is ``multiple * round(lr_size * scale
    / multiple)`` (halves up), kept within ``hr_sizes`` so that ``S / lr_size`` never leaves
    ``[scale_min, scale_max]``. With ``hr_crop`` the HR side is fixed instead and the LR side is
    ``round(hr_crop / scale)``, kept within the scale range: small scales then see as much of the image
    as large ones (a perceptual loss needs a crop its deep features can resolve).
    """

    lr_size: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    multiple: int = 3
    augment: bool = True
    hr_crop: int = 0
    """A fixed HR crop side (a multiple of ``multiple``); 0 derives it from ``lr_size`` and the scale."""

    def __post_init__(self) -> None:
        if not _is_integer(self.lr_size) or self.lr_size < 4:
            raise UsageError(f"the LR crop size must be an integer >= 4, got {self.lr_size!r}")
        if not _is_integer(self.multiple) or self.multiple < 1:
            raise UsageError(f"the HR crop multiple must be an integer >= 1, got {self.multiple!r}")
        if not (math.isfinite(self.scale_min) and self.scale_min >= 1):
            raise UsageError(f"the smallest training scale must be a number >= 1, got {self.scale_min!r}")
        if not (math.isfinite(self.scale_max) and self.scale_max >= self.scale_min):
            raise UsageError(
                f"the largest training scale must be >= the smallest ({self.scale_min}), got {self.scale_max!r}"
            )
        if self.hr_crop:
            self._check_hr_crop()
            return
        smallest, largest = self.hr_sizes
        if smallest > largest:
            raise UsageError(
                f"no HR crop side that is a multiple of {self.multiple} gives a scale in "
                f"[{self.scale_min}, {self.scale_max}] for LR crops of {self.lr_size} pixels; "
                "widen the scale range or change the LR crop size"
            )

    def _check_hr_crop(self) -> None:
        if not _is_integer(self.hr_crop) or self.hr_crop < 4 or self.hr_crop % self.multiple:
            raise UsageError(
                f"the fixed HR crop side must be an integer >= 4 and a multiple of {self.multiple}, "
                f"got {self.hr_crop!r}"
            )
        smallest, largest = self._lr_sides
        if smallest > largest or smallest < 1:
            raise UsageError(
                f"no LR crop side gives a scale in [{self.scale_min}, {self.scale_max}] for HR crops of "
                f"{self.hr_crop} pixels; widen the scale range or change the HR crop size"
            )

    @property
    def _lr_sides(self) -> tuple[int, int]:
        """Smallest and largest LR side for the fixed HR crop: ``hr_crop / side`` within the scale range."""
        smallest = math.ceil(self.hr_crop / self.scale_max - _ROUNDING_SLACK)
        largest = math.floor(self.hr_crop / self.scale_min + _ROUNDING_SLACK)
        return smallest, largest

    @property
    def hr_sizes(self) -> tuple[int, int]:
        """Smallest and largest HR crop side: the multiples of ``multiple`` in
        ``[lr_size * scale_min, lr_size * scale_max]``."""
        if self.hr_crop:
            return self.hr_crop, self.hr_crop
        smallest = self.multiple * math.ceil(self.lr_size * self.scale_min / self.multiple - _ROUNDING_SLACK)
        largest = self.multiple * math.floor(self.lr_size * self.scale_max / self.multiple + _ROUNDING_SLACK)
        return smallest, largest

    def hr_size(self, scale: float) -> int:
        """The HR crop side for a drawn ``scale``."""
        smallest, largest = self.hr_sizes
        nearest = self.multiple * math.floor(self.lr_size * scale / self.multiple + 0.5)
        return min(max(nearest, smallest), largest)

    def sides(self, scale: float) -> tuple[int, int]:
        """The (LR, HR) crop sides for a drawn ``scale``."""
        if not self.hr_crop:
            return self.lr_size, self.hr_size(scale)
        smallest, largest = self._lr_sides
        return min(max(math.floor(self.hr_crop / scale + 0.5), smallest), largest), self.hr_crop


def find_training_images(folders: Sequence[Path]) -> list[Path]:
    """Image files in ``folders`` and all their sub-folders, sorted by path, each file once (by real path)."""
    if not folders:
        raise UsageError("no training data folders given")
    found: dict[str, Path] = {}
    for folder in map(Path, folders):
        if not folder.exists():
            raise UsageError(f"training data folder not found: {folder}")
        if not folder.is_dir():
            raise UsageError(f"training data must be given as folders, {folder} is not a folder")
        for path in walk_images(folder, recursive=True):
            found.setdefault(os.path.realpath(path), path)
    if not found:
        names = ", ".join(os.fspath(folder) for folder in folders)
        raise UsageError(f"no images found in the training data folders: {names}")
    return sorted(found.values(), key=os.fspath)


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8/uint16 pixels as contiguous uint8 RGB: 16-bit rounded to 8 bits, grey replicated
    to three channels, alpha dropped."""
    colour = pixels[..., :3] if pixels.shape[2] >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    if colour.dtype == np.uint16:
        # round(v / 257): 65535 / 255 == 257, and ties cannot occur because 257 is odd.
        colour = ((colour.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return np.ascontiguousarray(colour)


class TrainingImages:
    """The usable training images among ``paths``, decoded once per process and kept in memory as
    uint8 RGB arrays (H, W, 3).

    Decoding happens on ``load()`` or on first use (``len``, indexing, ``usable``, ``skipped``). Images
    whose shorter side is below the recipe's largest HR crop, and files that cannot be decoded, are
    left out and listed in ``skipped`` with the reason. Pickling (to DataLoader workers under
    spawn/forkserver, or to DDP processes) carries the file lists, never the pixels: the receiving
    process decodes the usable images again on its first use, without re-checking the rest.
    """

    def __init__(self, paths: Sequence[Path], recipe: CropRecipe) -> None:
        self.paths = [Path(path) for path in paths]
        self.recipe = recipe
        self._usable: list[Path] | None = None
        self._skipped: list[tuple[Path, str]] = []
        self._pixels: list[np.ndarray] | None = None

    @property
    def min_side(self) -> int:
        """The shorter side an image needs to be usable: the recipe's largest HR crop."""
        return self.recipe.hr_sizes[1]

    @property
    def usable(self) -> list[Path]:
        """The files of the usable images, in index order."""
        self.load()
        assert self._usable is not None
        return list(self._usable)

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        """The files left out, each with the reason."""
        self.load()
        return list(self._skipped)

    def __len__(self) -> int:
        return len(self._loaded_pixels())

    def __getitem__(self, index: int) -> np.ndarray:
        """The decoded uint8 RGB pixels (H, W, 3) of usable image ``index`` (shared; do not modify)."""
        return self._loaded_pixels()[index]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pixels"] = None
        return state

    def _loaded_pixels(self) -> list[np.ndarray]:
        self.load()
        assert self._pixels is not None
        return self._pixels

    def load(self) -> None:
        """Decode the images now, if this process has not yet (later calls do nothing)."""
        if self._pixels is not None:
            return
        if self._usable is None:
            self._scan()
        else:
            self._pixels = [self._decode_known_usable(path) for path in self._usable]

    def _scan(self) -> None:
        """Decode every file once, keeping the usable images and the reasons for the rest."""
        usable: list[Path] = []
        pixels: list[np.ndarray] = []
        skipped: list[tuple[Path, str]] = []
        for path in self.paths:
            try:
                image = to_rgb8(read_image(path).pixels)
            except ImageError as exc:
                skipped.append((path, str(exc)))
                continue
            height, width = image.shape[:2]
            if min(height, width) < self.min_side:
                reason = f"too small: {width}x{height} pixels, training crops need a shorter side of {self.min_side}"
                skipped.append((path, reason))
                continue
            usable.append(path)
            pixels.append(image)
        if not usable:
            first_path, first_reason = skipped[0] if skipped else (None, "")
            detail = f" (e.g. {first_path}: {first_reason})" if first_path is not None else ""
            raise UsageError(f"none of the {len(self.paths)} training images is usable{detail}")
        self._usable, self._skipped, self._pixels = usable, skipped, pixels

    def _decode_known_usable(self, path: Path) -> np.ndarray:
        try:
            image = to_rgb8(read_image(path).pixels)
        except ImageError as exc:
            raise FlowsrError(f"{path}: {exc} (it was readable when the training data was first loaded)") from exc
        if min(image.shape[:2]) < self.min_side:
            raise FlowsrError(f"{path}: the training image has shrunk since the data was first loaded")
        return image


@dataclass
class Batch:
    """One training batch: LR inputs, HR targets, their common scale and the global index it was made for."""

    lr: torch.Tensor
    """(B, 3, L, L) float32 in [0, 1], multiples of 1/255 (L: the recipe's LR side for this scale)."""
    hr: torch.Tensor
    """(B, 3, S, S) float32 in [0, 1]."""
    scale: float
    """S / L."""
    step: int
    """The global batch index (see the module docstring)."""


def make_batch(images: TrainingImages, recipe: CropRecipe, batch_size: int, seed: int, step: int) -> Batch:
    """The batch for global index ``step``: the same for the same (images, recipe, batch_size, seed, step).

    Draw order from the generator: the scale, then per item the image, the crop's top and left and
    three flip/transpose coins (drawn even without ``augment``, so turning augmentation off keeps the
    crop windows).
    """
    if not _is_integer(batch_size) or batch_size < 1:
        raise UsageError(f"the batch size must be an integer >= 1, got {batch_size!r}")
    if recipe.hr_sizes[1] > images.min_side:
        raise ValueError(
            f"the images were checked for HR crops up to {images.min_side} pixels, "
            f"the recipe asks for {recipe.hr_sizes[1]}"
        )
    generator = torch.Generator().manual_seed(row_seed(seed, step))
    scale = recipe.scale_min + (recipe.scale_max - recipe.scale_min) * _uniform(generator)
    lr_size, hr_size = recipe.sides(scale)
    crops = [_random_crop(images, hr_size, recipe.augment, generator) for _ in range(batch_size)]
    hr = torch.cat([pixels_to_tensor(crop) for crop in crops])
    lr = resize(hr, (lr_size, lr_size)).clamp_(0.0, 1.0).mul_(255.0).round_().div_(255.0)
    return Batch(lr=lr, hr=hr, scale=hr_size / lr_size, step=step)


def _random_crop(images: TrainingImages, size: int, augment: bool, generator: torch.Generator) -> np.ndarray:
    """A random ``size`` x ``size`` window of a random image, randomly flipped and transposed (a view)."""
    pixels = images[_randint(len(images), generator)]
    top = _randint(pixels.shape[0] - size + 1, generator)
    left = _randint(pixels.shape[1] - size + 1, generator)
    flip_horizontal, flip_vertical, transpose = (bool(coin) for coin in torch.randint(2, (3,), generator=generator))
    crop = pixels[top : top + size, left : left + size]
    if augment:
        if flip_horizontal:
            crop = crop[:, ::-1]
        if flip_vertical:
            crop = crop[::-1]
        if transpose:
            crop = crop.transpose(1, 0, 2)
    return crop


def _randint(high: int, generator: torch.Generator) -> int:
    """Uniform integer in ``[0, high)``."""
    return int(torch.randint(high, (), generator=generator))


def _uniform(generator: torch.Generator) -> float:
    """Uniform float in ``[0, 1)``."""
    return float(torch.rand((), generator=generator, dtype=torch.float64))


class BatchStream(IterableDataset):
    """This rank's training batches, one per optimizer step from ``start_step`` on, without end.

    The batch for optimizer step ``t`` is ``make_batch(..., step=t * world_size + rank)`` (the global
    index; see the module docstring), so resuming at step ``t`` means ``start_step=t``. Inside a
    DataLoader with ``n`` workers, worker ``w`` makes the steps ``start_step + w``, ``start_step + w +
    n``, ...; the DataLoader takes one batch from each worker in turn, so it yields the same sequence as
    without workers. Each ``iter()`` starts again at ``start_step``.
    """

    def __init__(
        self,
        images: TrainingImages,
        recipe: CropRecipe,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not _is_integer(batch_size) or batch_size < 1:
            raise UsageError(f"the batch size must be an integer >= 1, got {batch_size!r}")
        if not _is_integer(start_step) or start_step < 0:
            raise UsageError(f"the start step must be an integer >= 0, got {start_step!r}")
        if not _is_integer(world_size) or world_size < 1:
            raise UsageError(f"the world size must be an integer >= 1, got {world_size!r}")
        if not _is_integer(rank) or not 0 <= rank < world_size:
            raise UsageError(f"the rank must be an integer in [0, {world_size}), got {rank!r}")
        self.images = images
        self.recipe = recipe
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    def global_index(self, step: int) -> int:
        """The global batch index this rank trains on at optimizer step ``step``."""
        return step * self.world_size + self.rank

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        worker_id, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for step in itertools.count(self.start_step + worker_id, workers):
            yield make_batch(self.images, self.recipe, self.batch_size, self.seed, self.global_index(step))


def make_loader(stream: BatchStream, workers: int) -> DataLoader:
    """A DataLoader over ``stream`` with ``workers`` worker processes (0: in this process).

    The images are loaded here, in the calling process, first: skipped files are known before training
    starts, and forked workers share the decoded pixels copy-on-write instead of decoding them again.
    """
    if not _is_integer(workers) or workers < 0:
        raise UsageError(f"the number of data workers must be an integer >= 0, got {workers!r}")
    stream.images.load()
    return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0, pin_memory=False)


def _is_integer(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)
