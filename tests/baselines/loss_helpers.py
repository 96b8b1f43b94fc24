"""Helpers shared by the loss tests: a seeded random batch, and a loss's value with its gradient."""
from __future__ import annotations

import torch


def random_batch(n: int = 6, c: int = 5, seed: int = 0, scale: float = 3.0, dtype=torch.float64):
    """Seeded logits (N, C) ~ scale * N(0, 1), requiring grad, and multi-hot targets (N, C) in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=dtype) * scale).requires_grad_()
    targets = torch.randint(0, 2, (n, c), generator=g).to(dtype)
    return logits, targets


def value_and_grad(fn, logits: torch.Tensor, *args, **kwargs):
    """``fn(logits, *args, **kwargs)`` and its gradient w.r.t. a fresh copy of ``logits``.

    A non-scalar output (``reduction='none'``) is contracted with a fixed random cotangent, so that
    two per-element losses are compared in gradient too.
    """
    x = logits.detach().clone().requires_grad_()
    out = fn(x, *args, **kwargs)
    cot = torch.rand(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (grad,) = torch.autograd.grad(out, x, cot if out.dim() else None)
    return out.detach(), grad
