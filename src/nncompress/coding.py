"""Lossless coding of integer codes: fixed-width bit packing, Huffman coding, and the
relative-index storage of sparse matrices.

Quantized and shared weights are stored as small integers (codes). Packing ``n`` codes of
``bits`` bits each takes ``ceil(n * bits / 8)`` bytes, which is what makes the 32/b size ratio of
a b-bit model real rather than nominal. Huffman coding then spends fewer bits on frequent codes:
its mean length ``L`` per symbol satisfies ``H <= L < H + 1`` for the entropy ``H`` of the symbol
frequencies. Sparse matrices store each non-zero's distance from the previous one in a few bits,
with filler zeros where a gap is too long, as in Deep Compression.

References: huffman1952method, shannon1948mathematical, han2016deep
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["pack_bits", "unpack_bits", "packed_nbytes", "entropy", "huffman_lengths", "HuffmanCode",
           "relative_encode", "relative_decode", "symbol_counts"]


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


# --------------------------------------------------------------------------- Huffman coding

def _check_counts(counts: Mapping[int, int]) -> dict[int, int]:
    if not isinstance(counts, Mapping) or not counts:
        raise ValueError("counts must be a non-empty mapping {symbol: count}")
    for symbol, n in counts.items():
        if not isinstance(symbol, int) or symbol < 0:
            raise ValueError(f"symbols must be non-negative ints, got {symbol!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"counts must be positive ints, got {n!r} for symbol {symbol}")
    return dict(counts)


def symbol_counts(symbols: torch.Tensor) -> dict[int, int]:
    """How often each value occurs in an integer tensor: ``{symbol: count}``."""
    values, counts = torch.unique(symbols.reshape(-1), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def entropy(counts: Mapping[int, int]) -> float:
    """Shannon entropy, in bits per symbol, of the frequencies ``counts``."""
    n = np.array(list(_check_counts(counts).values()), dtype=np.float64)
    p = n / n.sum()
    return float(-(p * np.log2(p)).sum())


def huffman_lengths(counts: Mapping[int, int]) -> dict[int, int]:
    """Code length of each symbol in an optimal prefix code for ``counts`` (Huffman's algorithm).

    A single symbol gets length 1. Ties are broken by symbol value, so the result is deterministic.

    References: huffman1952method
    """
    counts = _check_counts(counts)
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    # heap of (count, smallest symbol, symbols in the subtree); merging adds one bit to each.
    heap = [(n, s, [s]) for s, n in sorted(counts.items())]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    while len(heap) > 1:
        n1, s1, a = heapq.heappop(heap)
        n2, s2, b = heapq.heappop(heap)
        for s in a + b:
            lengths[s] += 1
        heapq.heappush(heap, (n1 + n2, min(s1, s2), a + b))
    return lengths


class HuffmanCode:
    """A canonical Huffman code: built from symbol counts, stored as code lengths alone.

    Canonical codes are assigned in order of (length, symbol), so the lengths determine the whole
    code and a file only needs to store them. :meth:`encode` turns a tensor of symbols into packed
    bytes (most significant bit first); :meth:`decode` reverses it.

    References: huffman1952method
    """

    def __init__(self, lengths: Mapping[int, int]):
        if not lengths:
            raise ValueError("lengths must not be empty")
        if any(not isinstance(n, int) or not 1 <= n <= 32 for n in lengths.values()):
            raise ValueError(f"code lengths must be ints in [1, 32], got {sorted(set(lengths.values()))}")
        kraft = sum(2.0 ** -n for n in lengths.values())
        if kraft > 1.0 + 1e-12:
            raise ValueError(f"these lengths admit no prefix code (Kraft sum {kraft:.4f} > 1)")
        self.lengths = dict(sorted(lengths.items()))
        self.codes: dict[int, int] = {}
        code, previous = 0, 0
        for symbol, n in sorted(self.lengths.items(), key=lambda item: (item[1], item[0])):
            code <<= n - previous
            self.codes[symbol] = code
            code, previous = code + 1, n
        self.max_length = max(self.lengths.values())

    @classmethod
    def from_counts(cls, counts: Mapping[int, int]) -> "HuffmanCode":
        return cls(huffman_lengths(counts))

    @classmethod
    def from_symbols(cls, symbols: torch.Tensor) -> "HuffmanCode":
        return cls.from_counts(symbol_counts(symbols))

    def words(self) -> dict[int, str]:
        """Each symbol's code word as a string of 0s and 1s."""
        return {s: format(c, f"0{self.lengths[s]}b") for s, c in self.codes.items()}

    def mean_length(self, counts: Mapping[int, int]) -> float:
        """Average bits per symbol when coding symbols with frequencies ``counts``."""
        counts = _check_counts(counts)
        missing = set(counts) - set(self.lengths)
        if missing:
            raise ValueError(f"symbols {sorted(missing)[:5]} have no code word")
        return sum(counts[s] * self.lengths[s] for s in counts) / sum(counts.values())

    def encode(self, symbols: torch.Tensor) -> tuple[bytes, int]:
        """The bit stream of ``symbols`` (any shape, flattened) as bytes, and its length in bits."""
        flat = symbols.reshape(-1).to(torch.int64).numpy()
        table_size = max(self.lengths) + 1
        if flat.size and (flat.min() < 0 or flat.max() >= table_size or
                          not all(int(v) in self.lengths for v in np.unique(flat))):
            raise ValueError("symbols contains values that have no code word")
        length_of = np.zeros(table_size, dtype=np.int64)
        code_of = np.zeros(table_size, dtype=np.int64)
        for s, n in self.lengths.items():
            length_of[s], code_of[s] = n, self.codes[s]
        lengths, codes = length_of[flat], code_of[flat]
        total = int(lengths.sum())
        owner = np.repeat(np.arange(flat.size), lengths)  # which symbol each bit belongs to
        position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        bits = (codes[owner] >> (lengths[owner] - 1 - position)) & 1  # most significant bit first
        return np.packbits(bits.astype(np.uint8)).tobytes(), total

    def decode(self, data: bytes, count: int) -> torch.Tensor:
        """The first ``count`` symbols of the bit stream ``data``, as a flat int64 tensor.

        Raises ValueError if the stream ends early or holds a bit pattern that is no code word.
        """
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        width = self.max_length
        # lookup table: the next `width` bits -> (symbol, length); -1 marks unused patterns
        table_symbol = np.full(1 << width, -1, dtype=np.int64)
        table_length = np.zeros(1 << width, dtype=np.int64)
        for s, code in self.codes.items():
            n = self.lengths[s]
            start = code << (width - n)
            table_symbol[start:start + (1 << (width - n))] = s
            table_length[start:start + (1 << (width - n))] = n
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)
        padded = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
        windows = np.zeros(len(bits), dtype=np.int64)  # the `width` bits starting at each position
        for k in range(width):
            windows = (windows << 1) | padded[k:k + len(bits)]
        out = np.empty(count, dtype=np.int64)
        position = 0
        for i in range(count):
            if position >= len(bits):
                raise ValueError(f"the stream ends after {i} of {count} symbols")
            w = windows[position]
            symbol = table_symbol[w]
            if symbol < 0:
                raise ValueError(f"invalid code word at bit {position}")
            out[i] = symbol
            position += table_length[w]
        if position > len(bits):
            raise ValueError(f"the stream ends inside symbol {count - 1}")
        return torch.from_numpy(out)


# --------------------------------------------------------------------------- sparse storage

def relative_encode(codes: torch.Tensor, index_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep Compression's sparse storage of a flat code tensor whose zeros are pruned weights.

    Each non-zero code is stored with its distance from the previous stored entry, ``gap`` in
    ``[1, 2**index_bits]``, kept as ``gap - 1`` in ``index_bits`` bits. A longer gap is bridged by
    filler entries: a stored code 0 at distance ``2**index_bits``. Returns ``(gaps_minus_one,
    values)``, two int64 tensors of equal length (fillers included).

    References: han2016deep
    """
    _check_bits(index_bits)
    flat = codes.reshape(-1).to(torch.int64)
    positions = flat.nonzero().reshape(-1)
    gaps = torch.diff(positions, prepend=positions.new_tensor([-1]))  # >= 1
    span = 1 << index_bits
    fillers = (gaps - 1) // span  # filler entries needed before each non-zero
    last = gaps - fillers * span  # the remaining gap, in [1, span]
    entries = fillers + 1
    total = int(entries.sum())
    ends = torch.cumsum(entries, 0) - 1  # where each non-zero's own entry goes
    gap_out = torch.full((total,), span - 1, dtype=torch.int64)
    value_out = torch.zeros(total, dtype=torch.int64)
    gap_out[ends] = last - 1
    value_out[ends] = flat[positions]
    return gap_out, value_out


def relative_decode(gaps_minus_one: torch.Tensor, values: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`relative_encode`: the flat code tensor of ``length`` entries.

    Raises ValueError if the entries do not fit in ``length`` positions.
    """
    if gaps_minus_one.shape != values.shape:
        raise ValueError(f"gaps and values must have the same shape, got {tuple(gaps_minus_one.shape)} "
                         f"and {tuple(values.shape)}")
    positions = torch.cumsum(gaps_minus_one.to(torch.int64) + 1, 0) - 1
    if len(positions) and int(positions[-1]) >= length:
        raise ValueError(f"the entries reach position {int(positions[-1])}, beyond length {length}")
    out = torch.zeros(length, dtype=torch.int64)
    out[positions] = values.to(torch.int64)
    return out
