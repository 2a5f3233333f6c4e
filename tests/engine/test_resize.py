"""Tests for flowsr_cli.engine.resize: MATLAB imresize 'bicubic' semantics.

Two independent references are used:

* ``resize_right`` (numpy path) with ``pad_mode='symmetric'``. resize-right pads the input with
  ``numpy.pad`` and ``'symmetric'`` repeats the edge sample (``c b a | a b c | c b a``), which is
  MATLAB's mirror ``[1..n, n..1]`` (numpy extends it periodically when the pad exceeds the axis).
  Its default ``'constant'`` pads with zeros, and its torch path uses ``torch.nn.functional.pad``,
  which has no symmetric mode (torch ``'reflect'`` omits the edge sample), so both differ from
  MATLAB at the borders. resize-right centres the output grid on the input
  (``u = i/s + (in-1)/2 - (out-1)/(2s)``), which equals MATLAB's mapping only when
  ``out == in * s``, so it is only a reference for the default scale ``out / in``.
* ``_matlab_matrix``: MATLAB's ``contributions`` transcribed in plain Python, building a dense
  matrix; used for explicit scales.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import resize_right
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from resize_right import interp_methods

from flowsr_cli.engine import resize as resize_module
from flowsr_cli.engine.resize import contributions, cubic, resize


def _kernel(t: float) -> float:
    a = abs(t)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def _matlab_matrix(in_size: int, out_size: int, scale: float, antialias: bool = True) -> np.ndarray:
    """Dense (out, in) resampling matrix following MATLAB imresize's contributions(), in plain Python."""
    shrink = antialias and scale < 1
    width = 4 / scale if shrink else 4.0
    mirror = list(range(1, in_size + 1)) + list(range(in_size, 0, -1))
    matrix = np.zeros((out_size, in_size))
    for i in range(1, out_size + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = [left + j for j in range(math.ceil(width) + 2)]
        weights = [scale * _kernel(scale * (u - t)) if shrink else _kernel(u - t) for t in taps]
        total = sum(weights)
        for t, w in zip(taps, weights):
            matrix[i - 1, mirror[(t - 1) % (2 * in_size)] - 1] += w / total
    return matrix


def _matlab_resize(
    image: np.ndarray, size: tuple[int, int], scale: tuple[float, float], antialias: bool = True
) -> np.ndarray:
    rows = _matlab_matrix(image.shape[0], size[0], scale[0], antialias)
    cols = _matlab_matrix(image.shape[1], size[1], scale[1], antialias)
    return rows @ image @ cols.T


def _resize_right(image: np.ndarray, size: tuple[int, int], antialias: bool = True) -> np.ndarray:
    return resize_right.resize(
        image,
        out_shape=size,
        interp_method=interp_methods.cubic,
        antialiasing=antialias,
        pad_mode="symmetric",
    )


RESIZE_RIGHT_CASES = [
    pytest.param((40, 40), (20, 20), id="down-2"),
    pytest.param((45, 45), (15, 15), id="down-3"),
    pytest.param((48, 48), (12, 12), id="down-4"),
    pytest.param((49, 49), (14, 14), id="down-3.5"),
    pytest.param((54, 54), (20, 20), id="down-2.7"),
    pytest.param((37, 53), (13, 19), id="down-non-integer"),
    pytest.param((20, 20), (40, 40), id="up-2"),
    pytest.param((10, 10), (35, 35), id="up-3.5"),
    pytest.param((5, 5), (36, 36), id="up-7.2"),
    pytest.param((37, 53), (74, 106), id="up-non-square"),
    pytest.param((37, 53), (90, 9), id="up-h-down-w"),
    pytest.param((37, 53), (11, 131), id="down-h-up-w"),
    pytest.param((37, 53), (37, 20), id="w-only"),
    pytest.param((3, 2), (1, 9), id="tiny-pad-wider-than-axis"),
    pytest.param((1, 7), (4, 3), id="single-row"),
]


@pytest.mark.parametrize(("in_shape", "out_shape"), RESIZE_RIGHT_CASES)
def test_matches_resize_right_float64(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).uniform(size=in_shape)
    ours = resize(torch.from_numpy(image), out_shape)
    expected = _resize_right(image, out_shape)
    assert ours.shape == out_shape
    assert np.abs(ours.numpy() - expected).max() <= 1e-5


@pytest.mark.parametrize(("in_shape", "out_shape"), RESIZE_RIGHT_CASES)
def test_matches_resize_right_float32(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> None:
    image = np.random.default_rng(1).uniform(size=in_shape).astype(np.float32)
    ours = resize(torch.from_numpy(image), out_shape)
    expected = _resize_right(image, out_shape)
    assert ours.dtype == torch.float32
    assert np.abs(ours.numpy() - expected).max() <= 1e-4


@pytest.mark.parametrize(("in_shape", "out_shape"), [((40, 40), (13, 17)), ((12, 9), (30, 4))])
def test_matches_resize_right_without_antialias(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> None:
    image = np.random.default_rng(2).uniform(size=in_shape)
    ours = resize(torch.from_numpy(image), out_shape, antialias=False)
    assert np.abs(ours.numpy() - _resize_right(image, out_shape, antialias=False)).max() <= 1e-5
    assert np.abs(ours.numpy() - _resize_right(image, out_shape, antialias=True)).max() > 1e-3


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "scale"),
    [
        pytest.param((100, 100), (37, 37), 1 / 2.7, id="eval-crop-2.7"),
        pytest.param((98, 70), (28, 20), 1 / 3.5, id="eval-crop-3.5"),
        pytest.param((10, 10), (36, 36), 3.5, id="up-size-not-scale-times-in"),
        pytest.param((30, 20), (11, 50), (0.3, 2.4), id="per-axis"),
    ],
)
def test_explicit_scale_matches_matlab_formula(
    in_shape: tuple[int, int], out_shape: tuple[int, int], scale: float | tuple[float, float]
) -> None:
    image = np.random.default_rng(3).uniform(size=in_shape)
    scale_pair = scale if isinstance(scale, tuple) else (scale, scale)
    ours = resize(torch.from_numpy(image), out_shape, scale=scale)
    assert np.abs(ours.numpy() - _matlab_resize(image, out_shape, scale_pair)).max() <= 1e-10


def test_default_scale_matches_matlab_formula() -> None:
    image = np.random.default_rng(4).uniform(size=(23, 31))
    ours = resize(torch.from_numpy(image), (9, 70))
    expected = _matlab_resize(image, (9, 70), (9 / 23, 70 / 31))
    assert np.abs(ours.numpy() - expected).max() <= 1e-10


def test_explicit_scale_differs_from_derived() -> None:
    signal = np.random.default_rng(5).uniform(size=(1, 10))
    explicit = resize(torch.from_numpy(signal), (1, 3), scale=(1.0, 1 / 3.5)).numpy()
    derived = resize(torch.from_numpy(signal), (1, 3)).numpy()
    assert np.abs(explicit - _matlab_resize(signal, (1, 3), (1.0, 1 / 3.5))).max() <= 1e-10
    assert np.abs(derived - _matlab_resize(signal, (1, 3), (1.0, 0.3))).max() <= 1e-10
    assert np.abs(explicit - derived).max() > 1e-3


def test_cubic_kernel_values() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, -0.5, -1.5], dtype=torch.float64)
    expected = [1.0, 0.8671875, 0.5625, 0.2265625, 0.0, -0.0703125, -0.0625, -0.0234375, 0.0, 0.0, 0.5625, -0.0625]
    assert cubic(x).tolist() == expected


def test_constant_image_stays_constant() -> None:
    image = torch.full((2, 3, 17, 23), 0.625, dtype=torch.float64)
    for size in [(5, 7), (40, 61), (17, 9), (1, 1)]:
        out = resize(image, size)
        assert torch.allclose(out, torch.full_like(out, 0.625), rtol=0, atol=1e-12)


def test_upscale_by_2_interior_sample_by_hand() -> None:
    # Output sample i=5 (1-based) of a x2 upscale: u = 5/2 + 0.5*(1 - 1/2) = 2.75, left = floor(u - 2) = 0.
    # Taps 0..5 sit at distances 2.75, 1.75, 0.75, -0.25, -1.25, -2.25 from u; the cubic gives
    # weights 0, -0.0234375, 0.2265625, 0.8671875, -0.0703125, 0 on input samples 1..4 (sum 1).
    ramp = torch.arange(1, 9, dtype=torch.float64)[None, :]
    assert resize(ramp, (1, 16))[0, 4].item() == pytest.approx(2.75, abs=1e-12)

    signal = [3.0, -1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    by_hand = -0.0234375 * 3.0 + 0.2265625 * -1.0 + 0.8671875 * 4.0 - 0.0703125 * 1.0
    out = resize(torch.tensor([signal], dtype=torch.float64), (1, 16))
    assert out[0, 4].item() == pytest.approx(by_hand, abs=1e-12)


def test_downscale_4x4_by_2_by_hand() -> None:
    # 4 -> 2 with antialiasing: h(x) = cubic(x/2)/2, width 8; u = 1.5 for the first output, taps -3..6.
    # Non-zero weights at taps -2..5: -0.01171875, -0.03515625, 0.11328125, 0.43359375 (and mirror
    # image); mirroring [1 2 3 4 4 3 2 1] folds taps -2, -1, 0, 5 onto samples 3, 2, 1, 4, giving:
    first = [0.546875, 0.3984375, 0.1015625, -0.046875]
    matrix = np.array([first, first[::-1]])
    image = np.arange(1.0, 17.0).reshape(4, 4) ** 2
    expected = matrix @ image @ matrix.T
    out = resize(torch.from_numpy(image), (2, 2))
    assert np.abs(out.numpy() - expected).max() <= 1e-12
    ramp_out = resize(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64), (1, 2))
    assert ramp_out[0].tolist() == pytest.approx([1.4609375, 3.5390625], abs=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 19, 26), (3, 19, 26), (19, 26)])
def test_leading_dims_are_batch(shape: tuple[int, ...]) -> None:
    image = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    out = resize(image, (7, 40))
    assert out.shape == (*shape[:-2], 7, 40)
    flat_in = image.reshape(-1, 19, 26)
    flat_out = out.reshape(-1, 7, 40)
    for plane_in, plane_out in zip(flat_in, flat_out):
        expected = _matlab_resize(plane_in.numpy(), (7, 40), (7 / 19, 40 / 26))
        assert np.abs(plane_out.numpy() - expected).max() <= 1e-10


def test_non_contiguous_input() -> None:
    image = torch.rand(3, 26, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    transposed = image.transpose(-1, -2)
    assert not transposed.is_contiguous()
    assert torch.equal(resize(transposed, (9, 31)), resize(transposed.contiguous(), (9, 31)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtype_preserved(dtype: torch.dtype) -> None:
    image = torch.rand(3, 12, 10).to(dtype)
    out = resize(image, (5, 21))
    assert out.dtype == dtype
    reference = resize(image.double(), (5, 21))
    assert torch.allclose(out.double(), reference, atol=0.05 if dtype in (torch.float16, torch.bfloat16) else 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    image = torch.rand(2, 3, 30, 41)
    out = resize(image.cuda(), (71, 13))
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), resize(image, (71, 13)), atol=1e-5)


def test_identity_when_size_unchanged() -> None:
    image = torch.rand(2, 11, 13)
    out = resize(image, (11, 13))
    assert torch.equal(out, image)
    assert out.data_ptr() != image.data_ptr()


def test_unchanged_axis_is_left_untouched() -> None:
    image = torch.rand(11, 13, dtype=torch.float64)
    out = resize(image, (11, 29))
    for row_in, row_out in zip(image, out):
        assert torch.equal(row_out, resize(row_in[None, :], (1, 29))[0])


def test_size_unchanged_but_scale_given_resamples() -> None:
    image = np.random.default_rng(8).uniform(size=(12, 12))
    out = resize(torch.from_numpy(image), (12, 12), scale=0.5)
    assert np.abs(out.numpy() - _matlab_resize(image, (12, 12), (0.5, 0.5))).max() <= 1e-10
    assert np.abs(out.numpy() - image).max() > 1e-3


def test_chunked_application_matches_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    image = torch.rand(2, 3, 23, 17, dtype=torch.float64)
    whole = resize(image, (50, 8))
    monkeypatch.setattr(resize_module, "_CHUNK_ELEMENTS", 100)
    assert torch.equal(resize(image, (50, 8)), whole)


def test_differentiable() -> None:
    image = torch.rand(1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: resize(t, (4, 11)), (image,))


def test_contributions_shapes_and_copies() -> None:
    indices, weights = contributions(6000, 21000, 3.5)
    assert indices.dtype == torch.int64 and weights.dtype == torch.float64
    assert indices.shape == weights.shape
    assert indices.shape[0] == 21000 and indices.shape[1] <= 6
    indices.zero_()
    weights.zero_()
    fresh_indices, fresh_weights = contributions(6000, 21000, 3.5)
    assert fresh_indices.any() and torch.allclose(fresh_weights.sum(dim=1), torch.ones(21000, dtype=torch.float64))


def test_contributions_downscale_taps() -> None:
    indices, weights = contributions(400, 100, 0.25)
    assert indices.shape[1] <= math.ceil(4 / 0.25) + 2
    dense = np.zeros((100, 400))
    np.add.at(dense, (np.arange(100)[:, None], indices.numpy()), weights.numpy())
    assert np.abs(dense - _matlab_matrix(400, 100, 0.25)).max() <= 1e-12


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param((torch.rand(5, 5).to(torch.int64) + 1, (3, 3)), {}, id="integer-tensor"),
        pytest.param((torch.rand(5), (3, 3)), {}, id="1d-tensor"),
        pytest.param((np.ones((5, 5)), (3, 3)), {}, id="not-a-tensor"),
        pytest.param((torch.rand(3, 0, 5), (3, 3)), {}, id="empty-height"),
        pytest.param((torch.rand(5, 5), (0, 3)), {}, id="zero-size"),
        pytest.param((torch.rand(5, 5), (3, -1)), {}, id="negative-size"),
        pytest.param((torch.rand(5, 5), (3.0, 3)), {}, id="float-size"),
        pytest.param((torch.rand(5, 5), (3,)), {}, id="size-one-element"),
        pytest.param((torch.rand(5, 5), 3), {}, id="size-scalar"),
        pytest.param((torch.rand(5, 5), (3, 3)), {"scale": 0.0}, id="zero-scale"),
        pytest.param((torch.rand(5, 5), (3, 3)), {"scale": -0.5}, id="negative-scale"),
        pytest.param((torch.rand(5, 5), (3, 3)), {"scale": float("nan")}, id="nan-scale"),
        pytest.param((torch.rand(5, 5), (3, 3)), {"scale": float("inf")}, id="inf-scale"),
        pytest.param((torch.rand(5, 5), (3, 3)), {"scale": (0.5, 0.5, 0.5)}, id="scale-triple"),
        pytest.param((torch.rand(5, 5), (3, 3)), {"scale": (0.5, 0.0)}, id="scale-pair-zero"),
        pytest.param((torch.rand(5, 5), (3, 3)), {"scale": "0.5"}, id="scale-string"),
    ],
)
def test_resize_rejects_bad_arguments(args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        resize(*args, **kwargs)


@pytest.mark.parametrize(("in_size", "out_size", "scale"), [(0, 3, 1.0), (3, 0, 1.0), (3, 3, 0.0), (3, 3, -2.0)])
def test_contributions_rejects_bad_arguments(in_size: int, out_size: int, scale: float) -> None:
    with pytest.raises(ValueError):
        contributions(in_size, out_size, scale)


@settings(max_examples=30, deadline=None)
@given(
    in_size=st.integers(min_value=1, max_value=40),
    out_size=st.integers(min_value=1, max_value=40),
    scale_ratio=st.one_of(st.none(), st.floats(min_value=0.5, max_value=2.0)),
    antialias=st.booleans(),
    value=st.floats(min_value=-10, max_value=10),
)
def test_contributions_properties(
    in_size: int, out_size: int, scale_ratio: float | None, antialias: bool, value: float
) -> None:
    scale = out_size / in_size * (1.0 if scale_ratio is None else scale_ratio)
    indices, weights = contributions(in_size, out_size, scale, antialias)
    assert indices.shape == weights.shape and indices.shape[0] == out_size
    assert int(indices.min()) >= 0 and int(indices.max()) < in_size
    assert torch.allclose(weights.sum(dim=1), torch.ones(out_size, dtype=torch.float64), rtol=0, atol=1e-12)

    image = torch.full((2, in_size, max(1, in_size // 2)), value, dtype=torch.float64)
    out = resize(image, (out_size, out_size), scale=scale, antialias=antialias)
    assert torch.allclose(out, torch.full_like(out, value), rtol=0, atol=1e-10)


def test_linear_kernel_matches_matlab_bilinear_via_resize_right() -> None:
    image = torch.rand(2, 37, 53, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for size in [(13, 19), (74, 106), (20, 60)]:
        ours = resize(image, size, kernel="linear")
        reference = resize_right.resize(
            image.numpy(), out_shape=(2, *size), interp_method=interp_methods.linear, antialiasing=True,
            pad_mode="symmetric",
        )  # fmt: skip
        assert np.abs(ours.numpy() - reference).max() < 1e-10
    with pytest.raises(ValueError, match="kernel must be one of"):
        resize(image, (10, 10), kernel="lanczos")
