"""The consistency stage (``--consistency``): any upscaler's output back-projected band by band, so that tiles
and bands change nothing; which models get it under ``auto``."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from flowsr_cli.config import consistency_default
from flowsr_cli.engine import consistent
from flowsr_cli.engine.consistent import ConsistentUpscaler
from flowsr_cli.engine.degrid import degrid_reach, remove_grid
from flowsr_cli.engine.pipeline import rgb_tensor
from flowsr_cli.engine.projection import halo_rows, project
from flowsr_cli.engine.upscaler import Upscaler, fixed_scale, samples_gaussian
from flowsr_cli.errors import UsageError
from flowsr_cli.families import upscalers
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler, prepare_model
from flowsr_cli.io.reading import read_image
from flowsr_cli.io.sizing import Size, SizeRequest
from tests.conftest import SHARED

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = Path(__file__).resolve().parents[2] / "flowsr_cli" / "weights"


@pytest.fixture(scope="module")
def strip() -> torch.Tensor:
    """A tall, narrow crop of Set5's butterfly, (1, 3, 240, 10): its upscales are several bands tall."""
    return rgb_tensor(read_image(SHARED / "data/eval/Set5/butterfly.png"))[..., 10:250, 100:110].contiguous()


ITERATIONS = 3
"""Back-projection steps in these tests: fewer than the default, so that halos are short and small images
are projected in several bands."""


@pytest.fixture
def tiny_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands as short as the stage allows (four halos) and :data:`ITERATIONS` steps, so that a small image is
    projected in several bands."""
    monkeypatch.setattr(consistent, "BAND_ELEMENTS", 1)
    monkeypatch.setattr(upscalers, "ConsistentUpscaler", functools.partial(ConsistentUpscaler, iterations=ITERATIONS))


def made_consistent(raw: torch.Tensor, lr: torch.Tensor, upscaler: Upscaler) -> torch.Tensor:
    """What the stage should make of ``raw``: its patch grid removed (patch models), then projected."""
    period = getattr(upscaler, "degrid_period", None)
    cleaned = remove_grid(raw.clamp(0, 1), period) if period else raw
    return project(cleaned, lr, ITERATIONS)


def engine(name: str, consistency: str, **request: object) -> Upscaler:
    """``bicubic`` or a bundled model on the CPU, with ``--consistency`` ``consistency``."""
    path = name if name == "bicubic" else str(WEIGHTS / f"{name}.safetensors")
    return create_upscaler(UpscalerRequest(path, device="cpu", consistency=consistency, **request))  # type: ignore[arg-type]


Window = tuple[range, range]
"""Output rows and columns that reached a sink together."""


def run(upscaler: Upscaler, lr: torch.Tensor, size: Size, seeds: list[int]) -> tuple[list[torch.Tensor], set[Window]]:
    """Every sample ``upscaler`` sends to its sink as a whole image, and the windows it sent; each output pixel
    must arrive exactly once."""
    images = [torch.full((1, lr.shape[1], size.height, size.width), float("nan")) for _ in seeds]
    writes = torch.zeros(len(seeds), size.height, size.width, dtype=torch.int32)
    windows: set[Window] = set()

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        images[sample][..., rows.start : rows.stop, columns.start : columns.stop] = tile
        writes[sample, rows.start : rows.stop, columns.start : columns.stop] += 1
        windows.add((rows, columns))

    upscaler.upscale(lr, size, sink, seeds)
    assert bool((writes == 1).all()), "every output pixel must reach the sink exactly once"
    return images, windows


def bands_of(windows: set[Window]) -> set[range]:
    """The row ranges of ``windows``."""
    return {rows for rows, _ in windows}


def test_every_pixel_arrives_once_in_full_width_bands(tiny_bands: None) -> None:
    lr = torch.rand(1, 3, 200, 10, generator=torch.Generator().manual_seed(0))
    size = Size(20, 400)
    (projected,), windows = run(engine("bicubic", "on", tile=8), lr, size, [0])
    bands = bands_of(windows)
    assert {columns for _, columns in windows} == {range(20)}, "full width"
    assert len(bands) >= 3, "several bands"
    assert sorted(band.start for band in bands) == [0, *sorted(band.stop for band in bands)[:-1]], "they tile"
    assert max(len(band) for band in bands) >= 4 * halo_rows(400, 200, 3)
    (raw,), _ = run(engine("bicubic", "off", tile=8), lr, size, [0])
    assert torch.allclose(projected, project(raw, lr, ITERATIONS), atol=1e-5)


CASES = {
    "bicubic": ("bicubic", 3.5, {"tile": 8}),
    "linf": ("linf", 3.5, {"tile": 12, "temperature": 0.8}),
    "linf-lp": ("linf-lp", 3.5, {"tile": 12}),
    "srflow": ("srflow", 4, {"tile": 12, "tile_pad": 4, "temperature": 0.0}),
    "srflow-lp": ("srflow-lp", 4, {"tile": 12, "tile_pad": 4}),
}
"""Each bundled model (and bicubic) at a scale it runs at, tiled in small tiles."""


@pytest.mark.parametrize("case", list(CASES))
def test_bands_and_tiles_give_the_projection_of_the_whole_output(
    strip: torch.Tensor, tiny_bands: None, case: str
) -> None:
    name, scale, request = CASES[case]
    size = SizeRequest(scale=scale).target(Size(strip.shape[-1], strip.shape[-2]))
    upscaler = engine(name, "on", **request)
    (projected,), windows = run(upscaler, strip, size, [5])
    assert len(bands_of(windows)) >= 2, "several bands, each cut with a halo"
    (raw,), _ = run(engine(name, "off", **request), strip, size, [5])
    assert torch.allclose(projected, made_consistent(raw, strip, upscaler), atol=1e-5)
    assert (projected - raw).abs().max() > 1e-3, "the projection changed the output"


@pytest.mark.parametrize("case", ["bicubic", "linf", "linf-lp"])
def test_tiled_equals_untiled(strip: torch.Tensor, tiny_bands: None, case: str) -> None:
    """End to end for the engines whose tiles are exact (SRFlow's feathered halo tiles are not: the test
    above shows that the stage adds nothing to their difference)."""
    name, scale, request = CASES[case]
    size = SizeRequest(scale=scale).target(Size(strip.shape[-1], strip.shape[-2]))
    (tiled,), _ = run(engine(name, "on", **request), strip, size, [5])
    (untiled,), _ = run(engine(name, "on", **{**request, "tile": 0}), strip, size, [5])
    assert torch.allclose(tiled, untiled, atol=1e-5)


@pytest.mark.parametrize("case", ["bicubic", "linf-lp"])
def test_wide_bands_go_in_strips_that_give_the_projection_of_the_whole_output(
    tiny_bands: None, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A band too wide for :data:`consistent.WINDOW_ELEMENTS` is processed in strips of columns, each with its
    halo of columns: the strips tile the band, each at least four column halos wide, and change nothing."""
    monkeypatch.setattr(consistent, "WINDOW_ELEMENTS", 1)
    name, scale, request = CASES[case]
    request = {**request, "tile": 64}  # tiles cut across the strips, few of them (the learned prior's are slow)
    lr = rgb_tensor(read_image(SHARED / "data/eval/Set5/butterfly.png"))[..., 60:100, 10:230].contiguous()
    size = SizeRequest(scale=scale).target(Size(lr.shape[-1], lr.shape[-2]))
    upscaler = engine(name, "on", **request)
    (projected,), windows = run(upscaler, lr, size, [5])
    strips = sorted({columns for _, columns in windows}, key=lambda columns: columns.start)
    assert len(strips) >= 2, "several strips"
    assert [columns.start for columns in strips] == [0, *[columns.stop for columns in strips[:-1]]], "they tile"
    period = upscaler.degrid_period or 1  # type: ignore[attr-defined]
    reach = halo_rows(size.width, lr.shape[-1], ITERATIONS) + (degrid_reach(period) if period > 1 else 0)
    assert len(strips[0]) >= 4 * reach, "at least four column halos wide"
    assert all(columns.start % period == 0 for columns in strips), "on the patch grid"
    (raw,), _ = run(engine(name, "off", **request), lr, size, [5])
    assert torch.allclose(projected, made_consistent(raw, lr, upscaler), atol=1e-5)
    assert (projected - raw).abs().max() > 1e-3, "the projection changed the output"


def test_each_sample_is_projected_on_its_own(strip: torch.Tensor, tiny_bands: None) -> None:
    size = SizeRequest(scale=3).target(Size(strip.shape[-1], strip.shape[-2]))
    upscaler = engine("linf", "on", tile=12, temperature=0.8)
    projected, _ = run(upscaler, strip, size, [3, 4])
    raw, _ = run(engine("linf", "off", tile=12, temperature=0.8), strip, size, [3, 4])
    assert (raw[0] - raw[1]).abs().max() > 1e-2, "two different samples"
    for sample in range(2):
        assert torch.allclose(projected[sample], made_consistent(raw[sample], strip, upscaler), atol=1e-5), sample


def test_the_wrapper_answers_for_its_engine() -> None:
    srflow = engine("srflow", "on", temperature=0.7)
    assert isinstance(srflow, ConsistentUpscaler)
    assert fixed_scale(srflow) == 4 and srflow.stochastic and samples_gaussian(srflow)
    assert srflow.temperature == 0.7  # type: ignore[attr-defined]
    assert srflow.name == srflow.inner.name and srflow.notes is srflow.inner.notes
    learned = engine("srflow-lp", "on")
    assert fixed_scale(learned) == 4 and not learned.stochastic and not samples_gaussian(learned)
    periods = [engine(name, "on").degrid_period for name in ("srflow", "linf-lp", "bicubic")]  # type: ignore[attr-defined]
    assert periods == [2, 3, None], "the grid filter's period: SRFlow's squeeze, LINF's patches, none"
    with pytest.raises(AttributeError):
        _ = srflow.no_such_attribute  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("metadata", "on"),
    [
        (None, False),  # bicubic
        ({"spec": "{}"}, True),  # a model flowsr trained
        ({"spec": "{}", "source": "RRDB_LINF.pth"}, False),  # an imported original checkpoint
        ({"spec": "{}", "consistency": "off"}, False),
        ({"spec": "{}", "source": "x.pth", "consistency": "on"}, True),  # the file's own entry decides
        ({"spec": "{}", "consistency": "maybe"}, True),
    ],
)
def test_what_auto_means_for_a_model(metadata: dict[str, str] | None, on: bool) -> None:
    assert consistency_default(metadata) is on


def test_auto_follows_the_model_file(tmp_path: Path) -> None:
    model = load_model(WEIGHTS / "linf.safetensors", torch.device("cpu"))
    save_model(model, tmp_path / "imported.safetensors", source="RRDB_LINF.pth")
    save_model(model, tmp_path / "measured.safetensors", consistency="off")

    def resolved(model: str, choice: str = "auto") -> bool:
        return prepare_model(UpscalerRequest(model, device="cpu", consistency=choice)).consistency

    assert resolved(str(WEIGHTS / "linf-lp.safetensors")) and resolved(str(WEIGHTS / "srflow.safetensors"))
    assert not resolved("bicubic") and resolved("bicubic", "on")
    imported = str(tmp_path / "imported.safetensors")
    assert not resolved(imported) and resolved(imported, "on")
    assert not resolved(str(tmp_path / "measured.safetensors"))
    assert not resolved(str(WEIGHTS / "linf-lp.safetensors"), "off")
    assert isinstance(engine("linf", "auto"), ConsistentUpscaler)
    assert not isinstance(engine("linf", "off"), ConsistentUpscaler)
    assert not isinstance(engine("bicubic", "auto"), ConsistentUpscaler)
    with pytest.raises(UsageError, match="consistency must be auto, on or off, got 'bogus'"):
        resolved("bicubic", "bogus")


def test_an_image_redone_after_cuda_out_of_memory_is_projected_once(
    tiny_bands: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LINF redoes the whole image in smaller tiles when CUDA runs out of memory, after some tiles reached the
    sink: the stage takes the new tiles for the rows it has not passed on, and each pixel arrives once."""
    from flowsr_cli.families.linf.engine import FlowUpscaler

    lr = rgb_tensor(read_image(SHARED / "data/eval/Set5/butterfly.png"))[..., 40:232, 100:110].contiguous()
    size = Size(20, 384)
    (raw,), _ = run(engine("linf", "off", tile=0, temperature=0.8), lr, size, [5])
    real_encode, calls = FlowUpscaler._encode, []

    def encode_at_the_device_boundary(self, lr_image, part, dtype):  # type: ignore[no-untyped-def]
        calls.append(part.rows.crop)
        if len(calls) == 2:  # the first of two tile rows (256 output rows) is done, a band passed on
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_encode(self, lr_image, part, dtype)

    monkeypatch.setattr(FlowUpscaler, "_encode", encode_at_the_device_boundary)
    upscaler = engine("linf", "on", tile=128, temperature=0.8)
    (projected,), windows = run(upscaler, lr, size, [5])
    assert upscaler.degrid_period == 3
    assert upscaler.notes == ["GPU out of memory: continuing with 64-pixel tiles"] and len(calls) == 5
    assert min(band.stop for band in bands_of(windows)) < 256, "a band was passed on before the image was redone"
    assert torch.allclose(projected, made_consistent(raw, lr, upscaler), atol=1e-5)


def test_non_finite_values_stay_where_they_were_and_do_not_spread() -> None:
    """Evaluation runs engines unguarded and counts non-finite outputs: the stage must neither hide them nor
    smear them over their neighbourhood through the grid filter's and the projection's sums."""
    raw = torch.rand(1, 3, 96, 90, generator=torch.Generator().manual_seed(2))
    raw[..., 40, 30], raw[..., 70, 11] = float("nan"), float("inf")

    class Broken:
        name, notes, stochastic = "broken", [], False
        model = type("Patches", (), {"patch_size": 3})()

        def upscale(self, lr, size, sink, seeds=(0,), progress=None):  # type: ignore[no-untyped-def]
            sink(0, range(size.height), range(size.width), raw)

    output = torch.empty_like(raw)

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        output[..., rows.start : rows.stop, columns.start : columns.stop] = tile

    ConsistentUpscaler(Broken()).upscale(torch.rand(1, 3, 32, 30), Size(90, 96), sink)  # type: ignore[arg-type]
    assert torch.equal(torch.isfinite(output), torch.isfinite(raw))
    assert torch.isnan(output[..., 40, 30]).all() and torch.isinf(output[..., 70, 11]).all()
