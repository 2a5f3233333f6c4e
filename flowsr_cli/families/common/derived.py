"""Values derived from a module's tensors (an inverse, folded weights), kept until a tensor changes."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def tensors_key(tensors: Iterable[torch.Tensor]) -> tuple[object, ...]:
    """What identifies the current contents of ``tensors``: each one's in-place version counter, storage,
    dtype and device, so an optimiser step, ``load_state_dict`` or ``.to()`` gives a new key."""
    return tuple((tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device) for tensor in tensors)
