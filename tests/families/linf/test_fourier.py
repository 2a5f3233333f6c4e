"""LINF's Fourier features: the differentiable form (training, and what torch.compile fuses) and the in-place form
(eager inference) compute the same thing, for a batch, and the first passes gradients to the table and phase."""

from __future__ import annotations

import math

import torch

from flowsr_cli.families.linf.fourier import fourier_terms, fourier_terms_into, rows_at


def _inputs(batch: int = 2, queries: int = 50, rows: int = 30, hidden: int = 8) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(batch, rows, 2 * hidden, generator=generator)
    phase = torch.randn(hidden // 2, generator=generator)
    index = torch.randint(0, rows, (4, batch, queries), generator=generator)
    relative_y = torch.rand(4, batch, queries, generator=generator) * 2 - 1
    relative_x = torch.rand(4, batch, queries, generator=generator) * 2 - 1
    weight = torch.rand(4, batch, queries, generator=generator)
    return table, phase, index, relative_y, relative_x, weight


def test_both_forms_agree_with_the_definition() -> None:
    table, phase, index, relative_y, relative_x, weight = _inputs()
    hidden = table.shape[-1] // 2
    expected = torch.empty(2, 50, 4 * hidden)
    for b in range(2):
        for n in range(50):
            for k in range(4):
                coef, freq = table[b, index[k, b, n], :hidden], table[b, index[k, b, n], hidden:]
                angle = math.pi * (
                    phase + freq[: hidden // 2] * relative_y[k, b, n] + freq[hidden // 2 :] * relative_x[k, b, n]
                )
                waves = torch.cat([torch.cos(angle), torch.sin(angle)])
                expected[b, n, k * hidden : (k + 1) * hidden] = waves * coef * weight[k, b, n]
    whole = fourier_terms(table, phase, index, relative_y, relative_x, weight)
    in_place = fourier_terms_into(torch.empty(2, 50, 4 * hidden), table, phase, index, relative_y, relative_x, weight)
    torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(in_place, expected, rtol=1e-5, atol=1e-6)


def test_the_whole_form_passes_gradients() -> None:
    table, phase, *neighbours = _inputs()
    table.requires_grad_(True)
    phase.requires_grad_(True)
    fourier_terms(table, phase, *neighbours).square().sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
    assert phase.grad is not None and phase.grad.abs().sum() > 0


def test_rows_at_reads_each_images_own_rows() -> None:
    table = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    index = torch.tensor([[4, 0], [1, 1]])
    assert torch.equal(rows_at(table, index), torch.stack([table[0, [4, 0]], table[1, [1, 1]]]))
