"""nncompress.coding: bit packing is lossless and takes ceil(n * bits / 8) bytes."""

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
    with pytest.raises(ValueError, match="codes"):
        coding.pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="codes"):
        coding.pack_bits(torch.tensor([-1]), 8)
    with pytest.raises(TypeError, match="integer"):
        coding.pack_bits(torch.tensor([1.0]), 8)
    with pytest.raises(ValueError, match="count"):
        coding.unpack_bits(torch.zeros(1, dtype=torch.uint8), 8, 2)
