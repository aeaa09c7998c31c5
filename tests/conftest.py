"""Shared helpers for the test suite."""

import torch


def blobs(n=600, seed=0):
    """A separable 10-class problem shaped like MNIST: class k lights up pixel block k.

    Returns ``(x, y)`` with ``x`` of shape ``(n, 1, 28, 28)`` and ``y`` of shape ``(n,)``.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    for k in range(10):
        x[y == k, 0, 2 * k : 2 * k + 3, 5:20] += 2.0
    return x, y
