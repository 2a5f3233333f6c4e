"""Memory layouts: flowsr's inference and training run convolution stacks channels-last."""

from __future__ import annotations

import torch


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` laid out channels-last: the layout in which oneDNN (CPU) and cuDNN run narrow 3x3
    convolutions fastest (1.4-2x on this project's CPU against NCHW). Layers keep their input's layout,
    so converting a network's input is enough; modules themselves never convert, which keeps the
    benchmark's upstream-style reference path on PyTorch's default layout."""
    return x.contiguous(memory_format=torch.channels_last)


def like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``x`` in ``reference``'s layout (channels-last or contiguous), for ops that drop the layout."""
    if reference.dim() == 4 and reference.is_contiguous(memory_format=torch.channels_last):
        return channels_last(x)
    return x.contiguous()


def in_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in autocast's lower precision when autocast is on for its device, else unchanged. For the input of
    a block that concatenates convolution outputs (dense blocks): autocast makes each convolution's output
    bfloat16/float16 but leaves a float32 input as it is, so every concatenation with it would be float32 (twice
    the bytes) and every convolution would cast it again; converted once, the block is what autocast computes
    anyway, at about half the time (a 683² dense block on this project's CPU: 0.25 s against 0.51 s)."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.is_floating_point():
        return x.to(torch.get_autocast_dtype(device))
    return x


def lerp_along(x: torch.Tensor, dim: int, low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``lerp(x[low], x[high], weight)`` along ``dim`` of a 4-D ``x`` (``low``, ``high``: index vectors,
    ``weight``: one value per index), in ``x``'s layout. A channels-last ``x`` is gathered as the NHWC tensor it is
    in memory, whole pixels (C values) at a time: ``index_select`` on its NCHW view would gather single values
    along the width and return the default layout (the paper-size UNet's widest width gather, 64 channels at
    342 x 171: 58 against 7 ms on this project's CPU)."""
    packed = is_channels_last(x)
    source = x.permute(0, 2, 3, 1) if packed else x
    axis = dim - 1 if packed else dim
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    blended = torch.lerp(source.index_select(axis, low), source.index_select(axis, high), weight.reshape(shape))
    return blended.permute(0, 3, 1, 2) if packed else blended


def is_channels_last(x: torch.Tensor) -> bool:
    """True when a 4-D tensor's channels vary fastest in memory (channels-last, or a channel slice of such a
    tensor, as a split's kept half is)."""
    return x.shape[1] > 1 and x.shape[3] > 1 and x.stride(1) < x.stride(3)
