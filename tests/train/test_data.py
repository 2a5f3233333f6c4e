"""Tests for flowsr_cli.train.data on real photos and real generated image files in nested folders."""

from __future__ import annotations

import itertools
import pickle
import shutil
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from flowsr_cli.engine.resize import resize
from flowsr_cli.errors import FlowsrError, UsageError
from flowsr_cli.train.data import (
    Batch,
    BatchStream,
    CropRecipe,
    TrainingImages,
    find_training_images,
    make_batch,
    make_loader,
)
from tests.conftest import SHARED
from tests.image_factory import gradient8, gradient16

PHOTOS = SHARED / "data/train/bsds500_train"
PHOTO_NAMES = ("100075.jpg", "100080.jpg", "100098.jpg")
SMALL = CropRecipe(lr_size=12, scale_min=1.0, scale_max=2.0)
"""Largest HR crop 24: keeps batches cheap; every file but the corrupt one is usable."""
DEFAULT_MIN_SIDE = 192


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three BSDS photos and generated 16-bit, grey, RGBA, too-small and corrupt files in nested folders."""
    root = tmp_path_factory.mktemp("train")
    (root / "photos/more").mkdir(parents=True)
    (root / "made/deeper").mkdir(parents=True)
    shutil.copy(PHOTOS / PHOTO_NAMES[0], root / "photos" / PHOTO_NAMES[0])
    shutil.copy(PHOTOS / PHOTO_NAMES[1], root / "photos/more" / PHOTO_NAMES[1])
    shutil.copy(PHOTOS / PHOTO_NAMES[2], root / PHOTO_NAMES[2])
    (root / "made/deep16.png").write_bytes(imagecodecs.png_encode(gradient16(3, 200, 210)))
    PILImage.fromarray(gradient8(1, 196, 200)[..., 0]).save(root / "made/grey.png")
    PILImage.fromarray(gradient8(4, 200, 200)).save(root / "made/deeper/rgba.png")
    PILImage.fromarray(gradient8(3, 100, 300)).save(root / "made/deeper/small.png")
    (root / "made/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (root / "made/notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def paths(data_root: Path) -> list[Path]:
    return find_training_images([data_root])


def photo_images(recipe: CropRecipe, tmp_path: Path | None = None) -> TrainingImages:
    """A fresh TrainingImages over the BSDS photos (copied to ``tmp_path`` when given)."""
    sources = [PHOTOS / name for name in PHOTO_NAMES]
    if tmp_path is not None:
        sources = [Path(shutil.copy(source, tmp_path / source.name)) for source in sources]
    return TrainingImages(sources, recipe)


def crop_pixels(batch: Batch, item: int) -> np.ndarray:
    """HR crop ``item`` as uint8 (S, S, 3), exactly the source pixels."""
    return (batch.hr[item] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def find_window(image: np.ndarray, crop: np.ndarray) -> tuple[int, int] | None:
    """Top-left corner of a window of ``image`` equal to ``crop``, or None."""
    size = crop.shape[0]
    corners = image[: image.shape[0] - size + 1, : image.shape[1] - size + 1]
    for top, left in zip(*np.nonzero(np.all(corners == crop[0, 0], axis=-1))):
        if np.array_equal(image[top : top + size, left : left + size], crop):
            return int(top), int(left)
    return None


def assert_same_batches(first: list[Batch], second: list[Batch]) -> None:
    assert [batch.step for batch in first] == [batch.step for batch in second]
    for a, b in zip(first, second, strict=True):
        assert a.scale == b.scale
        assert torch.equal(a.lr, b.lr) and torch.equal(a.hr, b.hr)


# Discovery


def test_finds_images_recursively_sorted_and_once(data_root: Path, paths: list[Path]) -> None:
    names = {path.relative_to(data_root).as_posix() for path in paths}
    assert names == {
        "100098.jpg",
        "photos/100075.jpg",
        "photos/more/100080.jpg",
        "made/deep16.png",
        "made/grey.png",
        "made/corrupt.jpg",
        "made/deeper/rgba.png",
        "made/deeper/small.png",
    }
    assert paths == sorted(paths, key=str)
    assert find_training_images([data_root, data_root / "photos", data_root]) == paths


def test_no_images_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty/sub").mkdir(parents=True)
    (tmp_path / "empty/sub/readme.txt").write_text("no pictures here")
    with pytest.raises(UsageError, match="no images found"):
        find_training_images([tmp_path / "empty"])
    with pytest.raises(UsageError, match="not found"):
        find_training_images([tmp_path / "missing"])
    with pytest.raises(UsageError, match="no training data folders"):
        find_training_images([])


# Loading


def test_small_and_corrupt_images_are_skipped_with_reasons(data_root: Path, paths: list[Path]) -> None:
    images = TrainingImages(paths, CropRecipe())
    skipped = dict(images.skipped)
    assert set(skipped) == {data_root / "made/corrupt.jpg", data_root / "made/deeper/small.png"}
    assert "too small: 300x100 pixels" in skipped[data_root / "made/deeper/small.png"]
    assert str(DEFAULT_MIN_SIDE) in skipped[data_root / "made/deeper/small.png"]
    assert "JPEG" in skipped[data_root / "made/corrupt.jpg"]
    assert len(images) == len(paths) - 2
    assert images.usable == [path for path in paths if path not in skipped]


def test_no_usable_image_is_a_usage_error(data_root: Path) -> None:
    images = TrainingImages([data_root / "made/corrupt.jpg", data_root / "made/deeper/small.png"], CropRecipe())
    with pytest.raises(UsageError, match="none of the 2 training images is usable"):
        len(images)


def test_16_bit_grey_and_rgba_load_as_uint8_rgb(data_root: Path) -> None:
    deep, grey, rgba = data_root / "made/deep16.png", data_root / "made/grey.png", data_root / "made/deeper/rgba.png"
    images = TrainingImages([deep, grey, rgba], CropRecipe())
    for index in range(3):
        assert images[index].dtype == np.uint8 and images[index].shape[2] == 3
    expected16 = np.round(gradient16(3, 200, 210) / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(images[0], expected16)
    np.testing.assert_array_equal(images[1], np.repeat(gradient8(1, 196, 200), 3, axis=2))
    np.testing.assert_array_equal(images[2], gradient8(4, 200, 200)[..., :3])


def test_images_are_decoded_once_and_pickled_without_pixels(tmp_path: Path) -> None:
    images = photo_images(SMALL, tmp_path)
    first = make_batch(images, SMALL, 2, seed=3, step=0)
    assert images[0] is images[0]
    payload = pickle.dumps(images)
    assert len(payload) < 4096
    copy = pickle.loads(payload)
    assert_same_batches([make_batch(copy, SMALL, 2, seed=3, step=0)], [first])
    assert copy.usable == images.usable and copy.skipped == images.skipped

    for path in images.paths:
        path.unlink()
    assert_same_batches([make_batch(images, SMALL, 2, seed=3, step=0)], [first])
    with pytest.raises(FlowsrError, match="it was readable when the training data was first loaded"):
        len(pickle.loads(payload))


# Batches


def test_batch_shapes_scales_and_values(paths: list[Path]) -> None:
    recipe = CropRecipe()
    images = TrainingImages(paths, recipe)
    for step in range(3):
        batch = make_batch(images, recipe, 3, seed=11, step=step)
        side = batch.hr.shape[-1]
        assert batch.lr.shape == (3, 3, 48, 48) and batch.hr.shape == (3, 3, side, side)
        assert batch.lr.dtype == batch.hr.dtype == torch.float32
        assert side % 3 == 0 and 48 <= side <= 192
        assert batch.scale == side / 48 and 1.0 <= batch.scale <= 4.0
        assert batch.step == step
        for tensor in (batch.lr, batch.hr):
            assert tensor.min() >= 0 and tensor.max() <= 1
            assert torch.equal(tensor * 255, (tensor * 255).round())


def test_a_fixed_hr_crop_gives_every_scale_the_same_hr_side(paths: list[Path]) -> None:
    recipe = CropRecipe(scale_min=1.0, scale_max=4.0, hr_crop=48)
    images = TrainingImages(paths, recipe)
    assert images.min_side == 48
    lr_sides = set()
    for step in range(12):
        batch = make_batch(images, recipe, 2, seed=3, step=step)
        lr_side = batch.lr.shape[-1]
        assert batch.hr.shape == (2, 3, 48, 48) and batch.lr.shape == (2, 3, lr_side, lr_side)
        assert batch.scale == 48 / lr_side and 1.0 <= batch.scale <= 4.0
        assert torch.equal(batch.lr, resize(batch.hr, (lr_side, lr_side)).clamp(0, 1).mul(255).round().div(255))
        lr_sides.add(lr_side)
    assert len(lr_sides) > 4 and min(lr_sides) >= 12 and max(lr_sides) <= 48


@settings(max_examples=200, deadline=None)
@given(hr_crop=st.integers(4, 200), scale_min=st.floats(1.0, 6.0), spread=st.floats(0.0, 4.0), draw=st.floats(0, 1))
def test_the_lr_side_of_a_fixed_hr_crop_keeps_the_scale_in_range(
    hr_crop: int, scale_min: float, spread: float, draw: float
) -> None:
    try:
        recipe = CropRecipe(scale_min=scale_min, scale_max=scale_min + spread, multiple=1, hr_crop=hr_crop)
    except UsageError as error:
        assert "widen the scale range" in str(error)
        return
    lr_side, hr_side = recipe.sides(scale_min + spread * draw)
    assert hr_side == hr_crop and lr_side >= 1
    assert recipe.scale_min - 1e-9 <= hr_side / lr_side <= recipe.scale_max + 1e-9


def test_lr_is_the_project_bicubic_of_hr_quantised(paths: list[Path]) -> None:
    recipe = CropRecipe()
    images = TrainingImages(paths, recipe)
    batch = make_batch(images, recipe, 2, seed=5, step=1)
    assert batch.scale > 1
    expected = resize(batch.hr, (48, 48)).clamp(0, 1).mul(255).round().div(255)
    assert torch.equal(batch.lr, expected)


def test_same_seed_and_step_give_the_same_batch(tmp_path: Path) -> None:
    batch = make_batch(photo_images(SMALL), SMALL, 3, seed=7, step=4)
    again = make_batch(photo_images(SMALL, tmp_path), SMALL, 3, seed=7, step=4)
    assert_same_batches([batch], [again])
    other_step = make_batch(photo_images(SMALL), SMALL, 3, seed=7, step=5)
    other_seed = make_batch(photo_images(SMALL), SMALL, 3, seed=8, step=4)
    for other in (other_step, other_seed):
        assert other.hr.shape != batch.hr.shape or not torch.equal(other.hr, batch.hr)


def test_scales_spread_over_the_range(paths: list[Path]) -> None:
    images = TrainingImages(paths, SMALL)
    sides = {make_batch(images, SMALL, 1, seed=0, step=step).hr.shape[-1] for step in range(40)}
    assert sides == {12, 15, 18, 21, 24}


def test_augmentation_flips_and_transposes(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (40, 44, 3), dtype=np.uint8)
    PILImage.fromarray(noise).save(tmp_path / "noise.png")
    images = TrainingImages([tmp_path / "noise.png"], SMALL)
    seen: set[tuple[bool, bool, bool]] = set()
    for step in range(20):
        batch = make_batch(images, SMALL, 4, seed=1, step=step)
        for item in range(4):
            crop = crop_pixels(batch, item)
            matches = [
                (horizontal, vertical, transpose)
                for horizontal, vertical, transpose in itertools.product((False, True), repeat=3)
                if find_window(noise, _undo(crop, horizontal, vertical, transpose)) is not None
            ]
            assert len(matches) == 1
            seen.add(matches[0])
    assert len(seen) == 8


def _undo(crop: np.ndarray, horizontal: bool, vertical: bool, transpose: bool) -> np.ndarray:
    """Invert ``data``'s augmentation: horizontal flip, then vertical flip, then transpose."""
    if transpose:
        crop = crop.transpose(1, 0, 2)
    if vertical:
        crop = crop[::-1]
    if horizontal:
        crop = crop[:, ::-1]
    return crop


def test_without_augmentation_crops_are_sub_windows_of_the_source() -> None:
    recipe = CropRecipe(lr_size=12, scale_min=2.0, scale_max=3.0, augment=False)
    images = TrainingImages([PHOTOS / PHOTO_NAMES[0]], recipe)
    batch = make_batch(images, recipe, 3, seed=2, step=0)
    for item in range(3):
        assert find_window(images[0], crop_pixels(batch, item)) is not None
    augmented = make_batch(images, CropRecipe(lr_size=12, scale_min=2.0, scale_max=3.0), 3, seed=2, step=0)
    assert not torch.equal(augmented.hr, batch.hr)


# Streams, workers and ranks


def test_stream_resumes_at_any_step(paths: list[Path]) -> None:
    images = TrainingImages(paths, SMALL)
    from_zero = list(itertools.islice(BatchStream(images, SMALL, 2, seed=9), 8))
    resumed = list(itertools.islice(BatchStream(images, SMALL, 2, seed=9, start_step=5), 3))
    assert_same_batches(resumed, from_zero[5:8])
    assert [batch.step for batch in from_zero] == list(range(8))


def test_loader_workers_yield_the_same_sequence(paths: list[Path]) -> None:
    stream = BatchStream(TrainingImages(paths, SMALL), SMALL, 2, seed=4, start_step=3)
    single = list(itertools.islice(make_loader(stream, workers=0), 4))
    loader = make_loader(stream, workers=2)
    parallel = list(itertools.islice(loader, 4))
    del loader
    assert_same_batches(parallel, single)
    assert [batch.step for batch in single] == [3, 4, 5, 6]


def test_ranks_split_the_single_process_sequence(paths: list[Path]) -> None:
    """Convention: at optimizer step t, rank r of world w trains on global batch t*w + r."""
    images = TrainingImages(paths, SMALL)
    single = list(itertools.islice(BatchStream(images, SMALL, 2, seed=6), 6))
    ranks = [list(itertools.islice(BatchStream(images, SMALL, 2, seed=6, rank=r, world_size=2), 3)) for r in (0, 1)]
    assert [batch.step for batch in ranks[0]] == [0, 2, 4]
    assert [batch.step for batch in ranks[1]] == [1, 3, 5]
    assert_same_batches(sorted(ranks[0] + ranks[1], key=lambda batch: batch.step), single)
    resumed = list(itertools.islice(BatchStream(images, SMALL, 2, seed=6, start_step=2, rank=1, world_size=2), 1))
    assert_same_batches(resumed, ranks[1][2:])


@settings(max_examples=60, deadline=None)
@given(
    world_size=st.integers(1, 8),
    start_step=st.integers(0, 50),
    steps=st.integers(1, 20),
)
def test_rank_indices_are_disjoint_and_contiguous(world_size: int, start_step: int, steps: int) -> None:
    streams = [
        BatchStream(TrainingImages([], SMALL), SMALL, 1, seed=0, start_step=start_step, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    indices = [stream.global_index(step) for stream in streams for step in range(start_step, start_step + steps)]
    assert sorted(indices) == list(range(start_step * world_size, (start_step + steps) * world_size))


@settings(max_examples=200, deadline=None)
@given(
    lr_size=st.integers(4, 96),
    scale_min=st.floats(1.0, 6.0),
    spread=st.floats(0.0, 4.0),
    multiple=st.integers(1, 4),
    draw=st.floats(0.0, 1.0),
)
def test_hr_size_is_a_multiple_within_the_scale_range(
    lr_size: int, scale_min: float, spread: float, multiple: int, draw: float
) -> None:
    try:
        recipe = CropRecipe(lr_size=lr_size, scale_min=scale_min, scale_max=scale_min + spread, multiple=multiple)
    except UsageError as error:
        assert "widen the scale range" in str(error)
        return
    side = recipe.hr_size(scale_min + spread * draw)
    assert side % multiple == 0
    assert recipe.scale_min - 1e-9 <= side / lr_size <= recipe.scale_max + 1e-9
    assert recipe.hr_sizes[0] <= side <= recipe.hr_sizes[1] == TrainingImages([], recipe).min_side


# Validation


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"lr_size": 3}, "LR crop size must be an integer >= 4"),
        ({"scale_min": 0.5}, "smallest training scale must be a number >= 1"),
        ({"scale_min": float("nan")}, "smallest training scale"),
        ({"scale_min": 3.0, "scale_max": 2.0}, r"largest training scale must be >= the smallest \(3.0\)"),
        ({"multiple": 0}, "HR crop multiple must be an integer >= 1"),
        ({"scale_min": 1.1, "scale_max": 1.1}, "no HR crop side that is a multiple of 3"),
        ({"hr_crop": 64}, "fixed HR crop side must be an integer >= 4 and a multiple of 3"),
        ({"hr_crop": 2.5}, "fixed HR crop side must be an integer"),
        ({"hr_crop": 30, "scale_min": 6.5, "scale_max": 6.6}, "no LR crop side gives a scale in"),
    ],
)
def test_recipe_validation(arguments: dict[str, float], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        CropRecipe(**arguments)


def test_stream_and_loader_validation(paths: list[Path]) -> None:
    images = TrainingImages(paths, SMALL)
    with pytest.raises(UsageError, match="rank"):
        BatchStream(images, SMALL, 2, seed=0, rank=2, world_size=2)
    with pytest.raises(UsageError, match="batch size"):
        BatchStream(images, SMALL, 0, seed=0)
    with pytest.raises(UsageError, match="start step"):
        BatchStream(images, SMALL, 1, seed=0, start_step=-1)
    with pytest.raises(UsageError, match="data workers"):
        make_loader(BatchStream(images, SMALL, 1, seed=0), workers=-1)
    with pytest.raises(ValueError, match="HR crops up to 24"):
        make_batch(images, CropRecipe(), 1, seed=0, step=0)
