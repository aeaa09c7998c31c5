"""Lossless coding of integer codes: fixed-width bit packing, Huffman coding, and the
relative-index storage of sparse matrices.

Quantized and shared weights are stored as small integers (codes). Packing ``n`` codes of
``bits`` bits each takes ``ceil(n * bits / 8)`` bytes, which is what makes the 32/b size ratio of
a b-bit model real rather than nominal. Huffman coding then spends fewer bits on frequent codes:
its mean length ``L`` per symbol satisfies ``H <= L < H + 1`` for the entropy ``H`` of the symbol
frequencies, whenever at least two distinct symbols occur. A source of one symbol is the
exception: ``H = 0``, yet each occurrence still takes one bit, so ``L = 1 = H + 1``. Decoding
works code length by code length (canonical decoding), so its memory grows with the stream, not
with ``2**(longest code)``: a skewed source whose longest code has 26 bits or more decodes as
cheaply as any other. Sparse matrices store each non-zero's distance from the previous one in a
few bits, with filler zeros where a gap is too long, as in Deep Compression.

References: huffman1952method, shannon1948mathematical, han2016deep
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

import numpy as np
import torch

from . import validate

__all__ = ["pack_bits", "unpack_bits", "packed_nbytes", "entropy", "huffman_lengths", "HuffmanCode",
           "relative_encode", "relative_decode", "symbol_counts"]

MAX_CODE_LENGTH = 62  # code words are int64 values


def _check_bits(bits, name: str = "bits") -> int:
    """``bits`` as an int in [1, 16], the error naming the argument ``name``."""
    return validate.bits(bits, name)


def _check_codes(codes, name: str = "codes") -> torch.Tensor:
    """``codes`` if it is an integer tensor."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {codes.dtype}")
    return codes


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy when packed: ``ceil(count * bits / 8)``.

    Parameters
    ----------
    count
        The number of codes, an int >= 0.
    bits
        Bits per code, an int in [1, 16].

    Returns
    -------
    int
        The packed size in bytes.

    Raises
    ------
    TypeError, ValueError
        If ``count`` or ``bits`` is not an int in its range.

    References
    ----------
    han2016deep
    """
    bits = _check_bits(bits)
    count = validate.integer(count, "count", 0)
    return (count * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer ``codes`` (any shape) into a flat uint8 tensor, ``bits`` per code.

    Codes are written in order, least significant bit first; the last byte is zero-padded.

    Parameters
    ----------
    codes
        An integer tensor with values in ``[0, 2**bits)``.
    bits
        Bits per code, an int in [1, 16].

    Returns
    -------
    torch.Tensor
        ``packed_nbytes(codes.numel(), bits)`` bytes, uint8.

    Raises
    ------
    TypeError
        If ``codes`` is not an integer tensor or ``bits`` not an int.
    ValueError
        If ``bits`` is outside [1, 16] or a code outside ``[0, 2**bits)``.

    References
    ----------
    han2016deep
    """
    bits = _check_bits(bits)
    flat = _check_codes(codes).reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}, "
                         f"got [{int(flat.min())}, {int(flat.max())}]")
    stream = (flat[:, None] >> torch.arange(bits)) & 1  # (n, bits), LSB first
    stream = stream.reshape(-1)
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
    weights = 1 << torch.arange(8)
    return (stream.reshape(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` codes.

    Parameters
    ----------
    packed
        A uint8 tensor from :func:`pack_bits`.
    bits
        Bits per code, an int in [1, 16].
    count
        How many codes to read, an int >= 0.

    Returns
    -------
    torch.Tensor
        A flat int64 tensor of ``count`` codes.

    Raises
    ------
    TypeError
        If ``packed`` is not a uint8 tensor.
    ValueError
        If ``bits`` or ``count`` is out of range, or ``packed`` is too short for ``count`` codes.

    References
    ----------
    han2016deep
    """
    bits = _check_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    if packed_nbytes(count, bits) > packed.numel():
        raise ValueError(f"count={count} codes of {bits} bits need {packed_nbytes(count, bits)} bytes, "
                         f"packed has {packed.numel()}")
    stream = (packed.reshape(-1).to(torch.int64)[:, None] >> torch.arange(8)) & 1  # (bytes, 8)
    stream = stream.reshape(-1)[: count * bits].reshape(count, bits)
    return (stream << torch.arange(bits)).sum(1)


# --------------------------------------------------------------------------- Huffman coding

def _check_counts(counts: Mapping[int, int]) -> dict[int, int]:
    """``counts`` as a dict, if it is a non-empty mapping of ints >= 0 to ints >= 1."""
    validate.mapping(counts, "counts")
    if not counts:
        raise ValueError("counts must be a non-empty mapping {symbol: count}")
    for symbol, n in counts.items():
        if isinstance(symbol, bool) or not isinstance(symbol, int) or symbol < 0:
            raise ValueError(f"symbols must be non-negative ints, got {symbol!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"counts must be positive ints, got {n!r} for symbol {symbol}")
    return dict(counts)


def symbol_counts(symbols: torch.Tensor) -> dict[int, int]:
    """How often each value occurs in an integer tensor.

    Parameters
    ----------
    symbols
        An integer tensor of any shape.

    Returns
    -------
    dict
        ``{symbol: count}`` for every value that occurs, in increasing order of symbol.

    Raises
    ------
    TypeError
        If ``symbols`` is not an integer tensor.

    References
    ----------
    shannon1948mathematical
    """
    values, counts = torch.unique(_check_codes(symbols, "symbols").reshape(-1), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def entropy(counts: Mapping[int, int]) -> float:
    """Shannon entropy ``H = -sum p log2 p``, in bits per symbol, of the frequencies ``counts``.

    Parameters
    ----------
    counts
        ``{symbol: count}`` with symbols ints >= 0 and counts ints >= 1.

    Returns
    -------
    float
        ``H``; 0 for a single symbol.

    Raises
    ------
    TypeError, ValueError
        If ``counts`` is not such a non-empty mapping.

    References
    ----------
    shannon1948mathematical
    """
    n = np.array(list(_check_counts(counts).values()), dtype=np.float64)
    p = n / n.sum()
    return float(-(p * np.log2(p)).sum())


def huffman_lengths(counts: Mapping[int, int]) -> dict[int, int]:
    """Code length of each symbol in an optimal prefix code for ``counts`` (Huffman's algorithm).

    The mean length ``L`` satisfies ``H <= L < H + 1`` for two or more symbols; a single symbol
    gets length 1 (``L = H + 1``). Ties are broken by symbol value, so the result is
    deterministic.

    Parameters
    ----------
    counts
        ``{symbol: count}`` with symbols ints >= 0 and counts ints >= 1.

    Returns
    -------
    dict
        ``{symbol: length in bits}``.

    Raises
    ------
    TypeError, ValueError
        If ``counts`` is not such a non-empty mapping.

    References
    ----------
    huffman1952method
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
    bytes (most significant bit first); :meth:`decode` reverses it without any table indexed by
    code words (see the module docstring).

    Parameters
    ----------
    lengths
        ``{symbol: code length}``, lengths ints in ``[1, 62]`` satisfying Kraft's inequality
        ``sum 2**-length <= 1``.

    Raises
    ------
    ValueError
        For empty ``lengths``, a length outside ``[1, 62]``, or lengths that admit no prefix code.

    References
    ----------
    huffman1952method
    """

    def __init__(self, lengths: Mapping[int, int]):
        validate.mapping(lengths, "lengths")
        if not lengths:
            raise ValueError("lengths must not be empty")
        if any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CODE_LENGTH
               for n in lengths.values()):
            raise ValueError(f"code lengths must be ints in [1, {MAX_CODE_LENGTH}], "
                             f"got {sorted(set(lengths.values()))}")
        kraft = sum(2.0 ** -n for n in lengths.values())
        if kraft > 1.0 + 1e-12:
            raise ValueError(f"these lengths admit no prefix code (Kraft sum {kraft:.4f} > 1)")
        self.lengths = {int(s): int(n) for s, n in sorted(lengths.items())}
        self.codes: dict[int, int] = {}
        code, previous = 0, 0
        for symbol, n in sorted(self.lengths.items(), key=lambda item: (item[1], item[0])):
            code <<= n - previous
            self.codes[symbol] = code
            code, previous = code + 1, n
        self.max_length = max(self.lengths.values())

    @classmethod
    def from_counts(cls, counts: Mapping[int, int]) -> "HuffmanCode":
        """The Huffman code of ``counts`` (:func:`huffman_lengths`)."""
        return cls(huffman_lengths(counts))

    @classmethod
    def from_symbols(cls, symbols: torch.Tensor) -> "HuffmanCode":
        """The Huffman code of the symbol frequencies in an integer tensor (:func:`symbol_counts`)."""
        return cls.from_counts(symbol_counts(symbols))

    def words(self) -> dict[int, str]:
        """Each symbol's code word as a string of 0s and 1s."""
        return {s: format(c, f"0{self.lengths[s]}b") for s, c in self.codes.items()}

    def mean_length(self, counts: Mapping[int, int]) -> float:
        """Average bits per symbol when coding symbols with frequencies ``counts``.

        Raises
        ------
        ValueError
            For bad ``counts`` or a symbol without a code word.
        """
        counts = _check_counts(counts)
        missing = set(counts) - set(self.lengths)
        if missing:
            raise ValueError(f"symbols {sorted(missing)[:5]} have no code word")
        return sum(counts[s] * self.lengths[s] for s in counts) / sum(counts.values())

    def encode(self, symbols: torch.Tensor) -> tuple[bytes, int]:
        """The bit stream of ``symbols`` (any shape, flattened), most significant bit first.

        Returns
        -------
        tuple
            The stream as bytes (the last byte zero-padded) and its length in bits.

        Raises
        ------
        TypeError
            If ``symbols`` is not an integer tensor.
        ValueError
            If a symbol has no code word.
        """
        flat = _check_codes(symbols, "symbols").reshape(-1).to(torch.int64).numpy()
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
        """The first ``count`` symbols of the bit stream ``data`` (as :meth:`encode` writes it).

        Canonical decoding: the code words of each length ``l`` are the consecutive integers from
        ``first[l]``, so the ``l``-bit prefix ``p`` of the remaining stream is a code word exactly
        when ``first[l] <= p < first[l] + count[l]``, and the shortest such ``l`` is the symbol's
        length. Every bit position is classified this way in ``max_length`` vectorized passes over
        the stream (in chunks), then one walk follows the lengths. Memory is a few bytes per bit
        of the stream; no table of ``2**max_length`` entries is built.

        Parameters
        ----------
        data
            The packed bits, most significant bit first.
        count
            How many symbols to decode, an int >= 0.

        Returns
        -------
        torch.Tensor
            A flat int64 tensor of ``count`` symbols.

        Raises
        ------
        TypeError, ValueError
            If ``count`` is not an int >= 0; ValueError if the stream ends early or holds a bit
            pattern that is no code word.

        References
        ----------
        huffman1952method
        """
        count = validate.integer(count, "count", 0)
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        lengths, index = self._classify(bits)
        ordered = self._canonical()[3]
        out = np.empty(count, dtype=np.int64)
        position = 0
        for i in range(count):
            if position >= len(bits):
                raise ValueError(f"the stream ends after {i} of {count} symbols")
            n = int(lengths[position])
            if n == 0:
                raise ValueError(f"invalid code word at bit {position}")
            out[i] = ordered[index[position]]
            position += n
        if position > len(bits):
            raise ValueError(f"the stream ends inside symbol {count - 1}")
        return torch.from_numpy(out)

    def _canonical(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``first[l]``, ``count[l]``, ``offset[l]`` per length ``l``, and the symbols in canonical order."""
        width = self.max_length
        count = np.bincount(list(self.lengths.values()), minlength=width + 1).astype(np.int64)
        first, offset = np.zeros(width + 1, dtype=np.int64), np.zeros(width + 1, dtype=np.int64)
        for n in range(1, width + 1):
            first[n] = (first[n - 1] + count[n - 1]) << 1
            offset[n] = offset[n - 1] + count[n - 1]
        ordered = np.array(sorted(self.lengths, key=lambda s: (self.lengths[s], s)), dtype=np.int64)
        return first, count, offset, ordered

    def _classify(self, bits: np.ndarray, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
        """Per bit position: the length (0: none) and canonical index of the code word starting there."""
        width = self.max_length
        first, count, offset, _ = self._canonical()
        padded = np.concatenate([bits, np.zeros(width, dtype=np.uint8)])
        lengths = np.zeros(len(bits), dtype=np.uint8)
        index = np.zeros(len(bits), dtype=np.int32)
        for start in range(0, len(bits), chunk):
            stop = min(start + chunk, len(bits))
            prefix = np.zeros(stop - start, dtype=np.int64)  # the first n bits at each position
            found = np.zeros(stop - start, dtype=bool)
            for n in range(1, width + 1):
                prefix = (prefix << 1) | padded[start + n - 1:stop + n - 1]
                hit = ~found & (prefix >= first[n]) & (prefix < first[n] + count[n])
                lengths[start:stop][hit] = n
                index[start:stop][hit] = offset[n] + prefix[hit] - first[n]
                found |= hit
        return lengths, index


# --------------------------------------------------------------------------- sparse storage

def relative_encode(codes: torch.Tensor, index_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep Compression's sparse storage of a flat code tensor whose zeros are pruned weights.

    Each non-zero code is stored with its distance from the previous stored entry, ``gap`` in
    ``[1, 2**index_bits]``, kept as ``gap - 1`` in ``index_bits`` bits. A longer gap is bridged by
    filler entries: a stored code 0 at distance ``2**index_bits``.

    Parameters
    ----------
    codes
        An integer tensor (flattened); zeros are not stored.
    index_bits
        Bits per gap, an int in [1, 16].

    Returns
    -------
    tuple of torch.Tensor
        ``(gaps_minus_one, values)``, two int64 tensors of equal length (fillers included).

    Raises
    ------
    TypeError
        If ``codes`` is not an integer tensor or ``index_bits`` not an int.
    ValueError
        If ``index_bits`` is outside [1, 16].

    References
    ----------
    han2016deep
    """
    span = 1 << _check_bits(index_bits, "index_bits")
    flat = _check_codes(codes).reshape(-1).to(torch.int64)
    positions = flat.nonzero().reshape(-1)
    gaps = torch.diff(positions, prepend=positions.new_tensor([-1]))  # >= 1
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

    Parameters
    ----------
    gaps_minus_one, values
        The two tensors :func:`relative_encode` returned.
    length
        The number of codes, an int >= 0.

    Returns
    -------
    torch.Tensor
        A flat int64 tensor, zero where nothing was stored.

    Raises
    ------
    ValueError
        If the two tensors differ in shape or the entries do not fit in ``length`` positions.

    References
    ----------
    han2016deep
    """
    length = validate.integer(length, "length", 0)
    if gaps_minus_one.shape != values.shape:
        raise ValueError(f"gaps_minus_one and values must have the same shape, got {tuple(gaps_minus_one.shape)} "
                         f"and {tuple(values.shape)}")
    positions = torch.cumsum(gaps_minus_one.to(torch.int64) + 1, 0) - 1
    if len(positions) and int(positions[-1]) >= length:
        raise ValueError(f"the entries reach position {int(positions[-1])}, beyond length {length}")
    out = torch.zeros(length, dtype=torch.int64)
    out[positions] = values.to(torch.int64)
    return out
