"""Attention heads: importance against finite differences, removal against gating the head to zero."""

import pytest
import torch

import nncompress as nc
from nncompress import layers as L
from nncompress import pruning
from nncompress.pruning.masks import key
from test_text import random_ids, tiny_encoder


def gated(model, heads, gates):
    """Forward pre-hooks multiplying each head's output columns by ``gates[block][head]``."""
    modules = dict(model.named_modules())
    handles = []
    for h, g in zip(heads, gates):
        def hook(module, args, h=h, g=g):
            return (args[0] * torch.as_tensor(g, dtype=args[0].dtype).repeat_interleave(h.size),)
        handles.append(modules[h.output].register_forward_pre_hook(hook))
    return handles


def test_removing_heads_equals_switching_them_off():
    encoder = tiny_encoder(layers=2)
    heads = nc.models.bert_heads(encoder)
    assert [h.count for h in heads] == [4, 4] and heads[0].size == 8
    ids = random_ids(6, 12)
    handles = gated(encoder, heads, [[1, 0, 1, 0], [1, 1, 1, 0]])
    with torch.no_grad():
        switched_off = encoder(ids)
    for handle in handles:
        handle.remove()
    smaller = pruning.remove_heads(encoder, heads, {0: [1, 3], 1: [3]})
    assert torch.allclose(smaller(ids), switched_off, atol=1e-5)
    new = nc.models.bert_heads(smaller)
    assert [h.count for h in new] == [2, 3]
    assert dict(smaller.named_modules())[new[0].output].in_features == 16
    assert nc.measure.count_params(smaller) == nc.measure.count_params(encoder) - 3 * (3 * (8 * 32 + 8) + 8 * 32)
    assert not torch.allclose(smaller(ids), encoder(ids), atol=1e-3)  # something was removed
    with pytest.raises(ValueError, match="keep at least one"):
        pruning.remove_heads(encoder, heads, {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="head"):
        pruning.head_masks(encoder, heads, {0: [4]})
    with pytest.raises(TypeError, match="Heads"):
        pruning.remove_heads(encoder, heads[0], {0: [1]})


def test_head_importance_is_the_gradient_of_the_loss_with_respect_to_a_gate():
    encoder = tiny_encoder(layers=2).double()  # float64, so that a finite difference is exact enough
    heads = nc.models.bert_heads(encoder)
    ids = random_ids(8, 10, seed=1)
    target = torch.randn(8, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss(model, batch):
        return ((model(batch) - target) ** 2).sum()

    scores = pruning.head_importance(encoder, heads, loss, [ids], normalize=False)
    eps = 1e-3
    for block, head in ((0, 2), (1, 0)):
        values = []
        for sign in (1, -1):
            g = [[1.0] * 4, [1.0] * 4]
            g[block][head] = 1 + sign * eps
            handles = gated(encoder, heads, g)
            with torch.no_grad():
                values.append(float(loss(encoder, ids)))
            for handle in handles:
                handle.remove()
        assert scores[block, head] == pytest.approx(abs(values[0] - values[1]) / (2 * eps), rel=1e-3)
    normalized = pruning.head_importance(encoder, heads, loss, [ids, ids])
    assert torch.allclose(normalized.norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert all(p.grad is None for p in encoder.parameters())  # the model's gradients are left alone


def test_ffn_neurons_are_removed_through_the_declared_couplings():
    encoder = tiny_encoder(layers=2)
    layer = "transformer.encoder.layer.1"
    masks = {key(f"{layer}.intermediate.dense", "weight"): torch.ones(64, 32),
             key(f"{layer}.intermediate.dense", "bias"): torch.ones(64)}
    for t in masks.values():
        t[10:30] = 0
    masked = pruning.apply_masks(encoder, masks)
    smaller = pruning.remove_channels(masked, nc.models.bert_couplings(encoder))
    ids = random_ids(5, 9, seed=3)
    assert torch.allclose(smaller(ids), masked(ids), atol=1e-5)
    assert dict(smaller.named_modules())[f"{layer}.output.dense"].in_features == 44
    assert L.Coupling("a", ()).consumers == ()


def test_keeping_layers_runs_only_those_layers():
    encoder = tiny_encoder(layers=3)
    ids = random_ids(4, 8, seed=5)
    shallow = nc.models.bert_keep_layers(encoder, [0, 2])
    assert len(nc.models.bert_layers(shallow)) == 2 and len(nc.models.bert_layers(encoder)) == 3
    class Skip(torch.nn.Module):  # a layer that passes its input through
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states

    skipped = nc.layers.replace(encoder, {"transformer.encoder.layer.1": Skip()})
    with torch.no_grad():
        expected = skipped(ids)
    assert torch.allclose(shallow(ids), expected, atol=1e-5)
    with pytest.raises(ValueError, match="distinct"):
        nc.models.bert_keep_layers(encoder, [1, 1])
    with pytest.raises(ValueError, match="keep"):
        nc.models.bert_keep_layers(encoder, [3])
