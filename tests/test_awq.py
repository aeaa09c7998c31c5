"""AWQ's activation-aware scaling: the grid search's guarantees, its effect when a few input
channels carry large activations (the paper's premise), and the model-level copy."""

import pytest
import torch
from torch import nn

from nncompress import quantization as Q
from nncompress.models import GPT, GPTConfig


def salient_inputs(rows=512, columns=64, seed=0):
    """Inputs whose first 2 channels are 20x larger than the others, and a random weight."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, columns, generator=gen)
    x[:, :2] *= 20
    return x, torch.randn(32, columns, generator=gen)


def output_error(weight, quantized, x):
    return float(((x @ (weight - quantized).T) ** 2).sum())


def test_alpha_zero_is_round_to_nearest_and_the_best_is_no_worse():
    x, w = salient_inputs()
    gram = (x.T @ x).double()
    scales, alpha, errors = Q.awq_scales([w], gram, len(x), bits=3, group_size=16)
    rtn = Q.rtn_quantize(w, 3, 16)
    assert errors[0] == pytest.approx(output_error(w, rtn, x), rel=1e-4)  # the Gram identity, checked
    assert min(errors) == errors[round(alpha * 20)] and min(errors) <= errors[0]
    awq = Q.rtn_quantize(w * scales, 3, 16) / scales
    assert output_error(w, awq, x) == pytest.approx(min(errors), rel=1e-4)


def test_salient_channels_make_awq_much_better_than_rounding():
    x, w = salient_inputs()
    scales, alpha, errors = Q.awq_scales([w], (x.T @ x).double(), len(x), bits=3, group_size=16)
    assert alpha > 0 and min(errors) < 0.6 * errors[0]
    assert scales[:2].min() > scales[2:].max()  # the salient channels are scaled up
    plain_x = torch.randn(512, 64, generator=torch.Generator().manual_seed(1))  # no salient channels: little to gain
    _, _, plain = Q.awq_scales([w], (plain_x.T @ plain_x).double(), 512, bits=3, group_size=16)
    assert min(plain) > 0.85 * plain[0]


def test_shared_scales_for_layers_reading_one_input():
    x, w = salient_inputs()
    w2 = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    scales, alpha, errors = Q.awq_scales([w, w2], (x.T @ x).double(), len(x), bits=4)
    one = Q.awq_scales([w], (x.T @ x).double(), len(x), bits=4, grid=20)[2]
    two = Q.awq_scales([w2], (x.T @ x).double(), len(x), bits=4, grid=20)[2]
    assert errors == pytest.approx([a + b for a, b in zip(one, two)], rel=1e-6)


def test_model_copy_computes_the_scaled_quantized_layers():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    batches = [torch.randint(0, 13, (4, 16)) for _ in range(2)]
    groups = [["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"], ["blocks.0.attn.proj"],
              ["blocks.0.mlp.fc"], ["blocks.0.mlp.proj"]]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = Q.awq_quantize_weights(model, batches, bits=4, group_size=16, groups=groups)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # untouched
    q, k = out.blocks[0].attn.q, out.blocks[0].attn.k
    assert isinstance(q, Q.SmoothedLinear) and torch.equal(q.inverse, k.inverse)  # one scale per shared input
    assert q.linear.weight_grid.bits == 4 and 0 <= q.awq_alpha < 1
    with torch.no_grad():  # the scaled layer equals the original weight up to 4-bit rounding
        rel = (q.linear.weight * q.inverse - model.blocks[0].attn.q.weight).norm() / model.blocks[0].attn.q.weight.norm()
    assert 0 < rel < 0.15
    state = Q.weight_only_state(out)
    assert any(key.endswith("attn.q.linear.weight.codes") or "attn.q.linear" in key for key in state)
    with pytest.raises(ValueError, match="once"):
        Q.awq_quantize_weights(model, batches, groups=[["blocks.0.mlp.fc"], ["blocks.0.mlp.fc"]])


def test_bad_input():
    w = torch.randn(4, 8)
    with pytest.raises(TypeError, match="weights"):
        Q.awq_scales(w, torch.eye(8), 10)
    with pytest.raises(ValueError, match="gram"):
        Q.awq_scales([w], torch.eye(4), 10)
    with pytest.raises(ValueError, match="same number"):
        Q.awq_scales([w, torch.randn(4, 6)], torch.eye(8), 10)
    with pytest.raises(ValueError, match="rows"):
        Q.awq_scales([w], torch.eye(8), 0)
