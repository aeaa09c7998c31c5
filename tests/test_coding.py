"""nncompress.coding: bit packing is lossless and takes ceil(n * bits / 8) bytes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress import coding


@settings(derandomize=True, database=None, deadline=None, max_examples=80)
@given(bits=st.integers(1, 16), count=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(bits, count, seed):
    codes = torch.randint(0, 1 << bits, (count,), generator=torch.Generator().manual_seed(seed))
    packed = coding.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == coding.packed_nbytes(count, bits) == -(-count * bits // 8)
    assert torch.equal(coding.unpack_bits(packed, bits, count), codes)


def test_known_layout_lsb_first():
    assert coding.pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b00001101, 1]
    assert coding.pack_bits(torch.tensor([3, 1]), 4).tolist() == [0x13]


def test_bad_input():
    with pytest.raises(ValueError, match="bits"):
        coding.pack_bits(torch.tensor([0]), 0)
    with pytest.raises(TypeError, match="bits"):
        coding.pack_bits(torch.tensor([0]), 2.0)
    with pytest.raises(ValueError, match="index_bits"):
        coding.relative_encode(torch.tensor([0, 1]), 17)
    with pytest.raises(ValueError, match="count"):
        coding.packed_nbytes(-1, 8)
    with pytest.raises(ValueError, match="codes"):
        coding.pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="codes"):
        coding.pack_bits(torch.tensor([-1]), 8)
    with pytest.raises(TypeError, match="integer"):
        coding.pack_bits(torch.tensor([1.0]), 8)
    with pytest.raises(ValueError, match="count"):
        coding.unpack_bits(torch.zeros(1, dtype=torch.uint8), 8, 2)


# --------------------------------------------------------------------------- Huffman coding

COUNTS = st.dictionaries(st.integers(0, 300), st.integers(1, 10_000), min_size=1, max_size=40)


def is_prefix_free(words):
    ordered = sorted(words)
    return all(not b.startswith(a) for a, b in zip(ordered, ordered[1:]))


@settings(derandomize=True, database=None, deadline=None, max_examples=80)
@given(counts=COUNTS, seed=st.integers(0, 2**16))
def test_huffman_is_prefix_free_round_trips_and_meets_the_entropy_bound(counts, seed):
    code = coding.HuffmanCode.from_counts(counts)
    assert is_prefix_free(list(code.words().values()))
    h, mean = coding.entropy(counts), code.mean_length(counts)
    if len(counts) > 1:
        assert h - 1e-9 <= mean < h + 1 - 1e-12  # strict: L < H + 1
    else:
        assert h == 0.0 and mean == 1.0  # one symbol: L = H + 1, the bound's exception
    # no worse than the Shannon code, whose lengths are ceil(-log2 p)
    total = sum(counts.values())
    shannon = sum(n * math.ceil(-math.log2(n / total) - 1e-12) for n in counts.values()) / total
    assert mean <= shannon + 1e-9 or len(counts) == 1
    symbols = torch.tensor(sorted(counts))[torch.randint(0, len(counts), (500,), generator=torch.Generator().manual_seed(seed))]
    data, nbits = code.encode(symbols)
    assert nbits == sum(code.lengths[int(s)] for s in symbols) and len(data) == -(-nbits // 8)
    assert torch.equal(code.decode(data, len(symbols)), symbols)


def test_huffman_on_a_textbook_example():
    # frequencies 45, 13, 12, 16, 9, 5 (a classic example): optimal lengths 1, 3, 3, 3, 4, 4
    counts = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}
    assert coding.huffman_lengths(counts) == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    assert coding.HuffmanCode.from_counts(counts).mean_length(counts) == pytest.approx(2.24)
    assert coding.huffman_lengths({7: 3}) == {7: 1}  # one symbol still needs a bit


def test_one_symbol_is_the_exception_to_the_entropy_bound():
    counts = {7: 1000}
    code = coding.HuffmanCode.from_counts(counts)
    h, mean = coding.entropy(counts), code.mean_length(counts)
    assert h == 0.0 and mean == 1.0 == h + 1  # L < H + 1 fails; H <= L holds
    symbols = torch.full((37,), 7)
    data, nbits = code.encode(symbols)
    assert nbits == 37 and torch.equal(code.decode(data, 37), symbols)


def fibonacci_counts(n):
    """Counts 1, 1, 2, 3, 5, ...: the most skewed source, whose longest Huffman code has n - 1 bits."""
    counts = [1, 1]
    while len(counts) < n:
        counts.append(counts[-1] + counts[-2])
    return dict(enumerate(counts))


def test_a_skewed_source_with_long_codes_decodes_exactly_in_little_memory():
    import tracemalloc

    counts = fibonacci_counts(30)
    code = coding.HuffmanCode.from_counts(counts)
    assert code.max_length == 29 >= 26
    assert sorted(code.lengths.values()) == sorted([29] + list(range(1, 30)))  # lengths 1, 2, ..., 29, 29
    g = torch.Generator().manual_seed(0)
    symbols = torch.cat([torch.arange(30), torch.randint(0, 30, (3000,), generator=g)])
    symbols = symbols[torch.randperm(len(symbols), generator=g)]
    data, nbits = code.encode(symbols)
    tracemalloc.start()
    try:
        decoded = code.decode(data, len(symbols))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert torch.equal(decoded, symbols)
    # a table of 2**29 entries would take gigabytes; canonical decoding takes a few bytes per bit
    assert peak < 64 * nbits + (1 << 20), peak


def test_huffman_rejects_bad_input():
    with pytest.raises(ValueError, match="counts"):
        coding.huffman_lengths({})
    with pytest.raises(ValueError, match="positive"):
        coding.huffman_lengths({1: 0})
    with pytest.raises(ValueError, match="prefix code"):
        coding.HuffmanCode({0: 1, 1: 1, 2: 1})
    with pytest.raises(ValueError, match="lengths"):
        coding.HuffmanCode({0: 1, 1: 63})
    with pytest.raises(ValueError, match="invalid code word"):
        coding.HuffmanCode({0: 2, 1: 2}).decode(bytes([0b11000000]), 1)  # 11 is no code word
    code = coding.HuffmanCode.from_counts({0: 5, 1: 3, 2: 1})
    with pytest.raises(ValueError, match="no code word"):
        code.encode(torch.tensor([0, 3]))
    data, _ = code.encode(torch.tensor([0, 1, 2, 2]))
    with pytest.raises(ValueError, match="ends"):
        code.decode(data, 40)


# --------------------------------------------------------------------------- relative indices

@settings(derandomize=True, database=None, deadline=None, max_examples=80)
@given(length=st.integers(1, 3000), density=st.floats(0.0, 1.0), index_bits=st.integers(1, 8),
       seed=st.integers(0, 2**16))
def test_relative_indices_round_trip_any_sparsity_pattern(length, density, index_bits, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(1, 32, (length,), generator=g) * (torch.rand(length, generator=g) < density)
    gaps, values = coding.relative_encode(codes, index_bits)
    assert len(gaps) == 0 or int(gaps.max()) < 1 << index_bits
    assert torch.equal(coding.relative_decode(gaps, values, length), codes)
    # one entry per non-zero, plus one filler per full span that a gap must bridge
    positions = codes.nonzero().reshape(-1)
    steps = torch.diff(positions, prepend=torch.tensor([-1]))
    assert len(values) == len(positions) + int(((steps - 1) // (1 << index_bits)).sum())


def test_relative_indices_insert_filler_zeros_like_deep_compression():
    codes = torch.zeros(20, dtype=torch.long)
    codes[[1, 12]] = torch.tensor([5, 7])  # gaps 2 and 11; with 3 bits a gap may be at most 8
    gaps, values = coding.relative_encode(codes, 3)
    assert gaps.tolist() == [1, 7, 2] and values.tolist() == [5, 0, 7]
    with pytest.raises(ValueError, match="beyond length"):
        coding.relative_decode(gaps, values, 12)
