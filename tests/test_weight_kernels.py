"""torch's weight-only int8 and int4 CPU kernels, wrapped: they compute the product with the
package's round-to-nearest weights, and refuse what they cannot run."""

import pytest
import torch
from torch import nn

from nncompress import quantization as Q
from nncompress.models import GPT, GPTConfig, gpt_layers


def layer(in_features=256, out_features=96, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_int8_kernel_computes_the_symmetric_rtn_weight(bias):
    linear = layer(bias=bias)
    x = torch.randn(3, 5, 256)
    reference = nn.functional.linear(x, Q.rtn_quantize(linear.weight, 8, None, symmetric=True), linear.bias)
    out = Q.Int8WeightLinear(linear)(x)
    assert out.shape == (3, 5, 96) and torch.allclose(out, reference, atol=1e-4, rtol=1e-4)
    assert Q.Int8WeightLinear(linear).codes.dtype == torch.int8


@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_kernel_computes_the_grouped_rtn_weight(group_size):
    linear = layer()
    x = torch.randn(7, 256)
    reference = nn.functional.linear(x, Q.rtn_quantize(linear.weight, 4, group_size), linear.bias)
    module = Q.Int4WeightLinear(linear, group_size)
    assert torch.allclose(module(x), reference, atol=2e-3, rtol=1e-3)  # the kernel keeps scales in bfloat16 at most
    assert module.packed.numel() == 96 * 256 // 2  # two codes per byte


def test_model_conversion_and_errors():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=64)).eval()
    idx = torch.randint(0, 13, (2, 8))
    for bits in (8, 4):
        out = Q.to_weight_kernels(model, bits, group_size=64, layers=gpt_layers(model))
        assert isinstance(out.blocks[0].mlp.fc, (Q.Int8WeightLinear, Q.Int4WeightLinear))
        with torch.no_grad():
            assert (out(idx) - model(idx)).abs().max() < (0.05 if bits == 8 else 0.3)
    assert isinstance(model.blocks[0].mlp.fc, nn.Linear)  # untouched
    with pytest.raises(ValueError, match="bits"):
        Q.to_weight_kernels(model, 3)
    with pytest.raises(ValueError, match="group_size"):
        Q.Int4WeightLinear(layer(), 48)
    with pytest.raises(ValueError, match="divide"):
        Q.Int4WeightLinear(layer(in_features=96), 64)
    with pytest.raises(ValueError, match="out_features"):
        Q.Int4WeightLinear(layer(out_features=13), 64)
    with pytest.raises(TypeError, match="linear"):
        Q.Int8WeightLinear(nn.Conv1d(2, 2, 1))
