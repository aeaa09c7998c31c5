"""Every technique applied to a transformer block (tests/transformer_block.py), where the data
flow is not a chain: layers chosen by name, glob pattern or type, the input model untouched,
and each result checked against a property that must hold."""

import copy

import pytest
import torch
from torch import nn

from nncompress import layers, lowrank, measure, parametrizations, pruning, sharing
from nncompress import quantization as Q
from nncompress.fileformat import load, save

from transformer_block import LINEARS, block, tokens


def assert_untouched(model, before):
    """``model`` still has exactly the state it had (``before``) and still runs."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key
    model(tokens(2))


@pytest.fixture
def model():
    return block()


def test_layers_are_selected_by_name_pattern_and_type(model):
    assert list(layers.select(model)) == LINEARS
    assert list(layers.select(model, "attn.*")) == LINEARS[:4]
    assert list(layers.select(model, ["ffn.fc2", "attn.[qk]"])) == ["attn.q", "attn.k", "ffn.fc2"]
    assert list(layers.select(model, nn.LayerNorm, types=(nn.LayerNorm,))) == ["ln1", "ln2"]
    with pytest.raises(TypeError, match="ln1"):
        layers.select(model, "ln1")
    with pytest.raises(ValueError, match="attn.x"):
        layers.select(model, "attn.x")
    with pytest.raises(ValueError, match=r"pattern 'mlp\.\*'"):
        layers.select(model, "mlp.*")


def test_magnitude_pruning_per_layer_and_global(model):
    before = copy.deepcopy(model.state_dict())
    pruned = pruning.prune_magnitude(model, 0.5, layers="attn.*")
    assert_untouched(model, before)
    sparsity = pruning.layer_sparsity(pruned)
    for name in LINEARS[:4]:
        assert sparsity[name] == pytest.approx(0.5)
    assert sparsity["ffn.fc1"] == 0.0 and sparsity["ffn.fc2"] == 0.0
    glob = pruning.prune_magnitude(model, 0.7, scope="global")
    kept = sum(int(torch.count_nonzero(m.weight)) for m in layers.select(glob).values())
    total = sum(m.weight.numel() for m in layers.select(glob).values())
    assert kept == total - round(0.7 * total)
    with torch.no_grad():
        smallest_kept = min(float(m.weight[m.weight != 0].abs().min()) for m in layers.select(glob).values())
        largest_pruned = max(float(w.abs().max()) for w in
                             (parametrizations.original(m, "weight")[m.weight == 0]
                              for m in layers.select(glob).values()) if w.numel())
    assert largest_pruned <= smallest_kept  # one threshold across all layers


def test_ffn_neurons_are_removed_physically_with_the_same_outputs(model):
    masked = pruning.prune_channels(model, 0.5, layers="ffn.fc1")
    coupling = layers.Coupling("ffn.fc1", ("ffn.fc2",))
    small = pruning.remove_channels(masked, [coupling])
    assert small.ffn.fc1.out_features == 32 and small.ffn.fc2.in_features == 32
    assert isinstance(small.ffn.fc1, nn.Linear) and not parametrizations.find(small)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x), atol=1e-5, rtol=1e-5)
    assert measure.count_params(small) == measure.count_params(model) - 32 * (32 + 1 + 32)


def test_w8a8_fake_quantization_with_calibration_and_int8_kernels(model):
    before = copy.deepcopy(model.state_dict())
    x = tokens()
    fq = Q.post_training_quantize(model, x, weight_bits=8, activation_bits=8, outputs=nn.Linear,
                                  reduce_range=True)  # no int16 saturation on CPUs without VNNI
    assert_untouched(model, before)
    assert type(fq) is type(model)  # not turned into a Sequential
    assert sorted(Q.weight_quantizers(fq)) == sorted(LINEARS)
    with torch.no_grad():
        reference, simulated = model(x), fq(x)
    error = (simulated - reference).norm() / reference.norm()
    assert 0 < error < 0.05  # quantized, and close
    int8 = Q.to_int8(fq)
    assert sum(measure._int8_layer(m) for m in int8.modules()) == len(LINEARS)
    with torch.no_grad():
        real = int8(x)
    assert (real - simulated).norm() / simulated.norm() < 0.02  # the kernels compute what was simulated


def test_truncated_and_data_aware_svd(model):
    x = tokens()
    plain = lowrank.factorize(model, ranks={"ffn.fc1": 8})
    aware = lowrank.factorize(model, ranks={"ffn.fc1": 8}, inputs=x)
    assert isinstance(plain.ffn.fc1, lowrank.LowRankLinear) and plain.ffn.fc1.rank == 8
    assert isinstance(model.ffn.fc1, nn.Linear) and not isinstance(model.ffn.fc1, lowrank.LowRankLinear)
    with torch.no_grad():
        h = model.ln2(x + model.attn(model.ln1(x)))  # what fc1 receives
        exact = model.ffn.fc1(h)
        plain_error = (plain.ffn.fc1(h) - exact).norm()
        aware_error = (aware.ffn.fc1(h) - exact).norm()
    assert aware_error < plain_error  # DRONE minimizes the output error on these inputs
    full = lowrank.factorize(model, ranks={"attn.*": 32})
    with torch.no_grad():
        torch.testing.assert_close(full(x), model(x), atol=1e-4, rtol=1e-4)


def test_kronecker_factorization_of_the_ffn(model):
    kron = lowrank.factorize_kronecker(model, {"ffn.fc1": ((8, 4), (8, 8))})
    layer = kron.ffn.fc1
    assert isinstance(layer, lowrank.KroneckerLinear)
    a, b = lowrank.nearest_kronecker(model.ffn.fc1.weight, (8, 4), (8, 8))
    torch.testing.assert_close(layer.weight, torch.kron(a[0], b[0]))
    kron(tokens(2))


def test_kmeans_sharing_and_the_compressed_file_round_trip(model, tmp_path):
    shared = sharing.apply_sharing(model, 4, layers="ffn.*")
    assert sorted(sharing.shared_layers(shared)) == ["ffn.fc1", "ffn.fc2"]
    assert all(len(torch.unique(shared.get_submodule(n).weight)) <= 16 for n in ("ffn.fc1", "ffn.fc2"))
    path = tmp_path / "block.nncz"
    size = save(shared, path)
    assert size == path.stat().st_size < measure.serialized_bytes(model)
    restored = load(path, block(seed=5))
    x = tokens()
    with torch.no_grad():
        assert torch.equal(restored(x), shared(x))
