"""Lossless coding of integer codes: fixed-width bit packing.

Quantized and shared weights are stored as small integers (codes). Packing ``n`` codes of
``bits`` bits each takes ``ceil(n * bits / 8)`` bytes, which is what makes the 32/b size ratio of
a b-bit model real rather than nominal.
"""

from __future__ import annotations

import torch

__all__ = ["pack_bits", "unpack_bits", "packed_nbytes"]


def _check_bits(bits) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    return bits


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy when packed: ``ceil(count * bits / 8)``."""
    _check_bits(bits)
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    return (count * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer ``codes`` (any shape) into a flat uint8 tensor, ``bits`` per code.

    Codes are written in order, least significant bit first; the last byte is zero-padded.
    Raises ``ValueError`` if ``bits`` is outside [1, 16] or a code is outside [0, 2**bits).
    """
    _check_bits(bits)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}, "
                         f"got [{int(flat.min())}, {int(flat.max())}]")
    stream = (flat[:, None] >> torch.arange(bits)) & 1  # (n, bits), LSB first
    stream = stream.reshape(-1)
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
    weights = 1 << torch.arange(8)
    return (stream.reshape(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` codes, as a flat int64 tensor."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {packed.dtype}")
    if packed_nbytes(count, bits) > packed.numel():
        raise ValueError(f"count={count} codes of {bits} bits need {packed_nbytes(count, bits)} bytes, "
                         f"packed has {packed.numel()}")
    stream = (packed.reshape(-1).to(torch.int64)[:, None] >> torch.arange(8)) & 1  # (bytes, 8)
    stream = stream.reshape(-1)[: count * bits].reshape(count, bits)
    return (stream << torch.arange(bits)).sum(1)
