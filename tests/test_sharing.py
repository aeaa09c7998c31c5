"""nncompress.sharing: k-means against scikit-learn, centroid gradients, HashedNets, tied weights,
and the compressed file format (bitwise round trip, corruption rejected)."""

import copy

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from torch import nn

from nncompress import sharing as S
from nncompress.models import LeNet5, MLP


def weights(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([0.05 * torch.randn(n, generator=g), 0.3 * torch.randn(n // 10, generator=g)])


# --------------------------------------------------------------------------- k-means

@pytest.mark.parametrize("init", S.INITS)
@pytest.mark.parametrize("k", [4, 16, 32])
def test_kmeans_inertia_matches_scikit_learn_from_the_same_start(init, k):
    w = weights()
    start = S.init_centroids(w, k, init, generator=torch.Generator().manual_seed(1))
    centroids, labels, inertia = S.kmeans(w, k, start, iterations=300)
    reference = KMeans(k, init=start.double().numpy()[:, None], n_init=1, max_iter=300, tol=0.0,
                       algorithm="lloyd").fit(w.double().numpy()[:, None])
    assert inertia == pytest.approx(reference.inertia_, rel=0.01)
    # our inertia is what it claims to be
    assert inertia == pytest.approx(float((w.double() - centroids.double()[labels]).pow(2).sum()), rel=1e-6)


def test_initializations_place_centroids_as_han_et_al_describe():
    w = weights()
    linear = S.init_centroids(w, 8, "linear")
    torch.testing.assert_close(linear, torch.linspace(float(w.min()), float(w.max()), 8))
    density = S.init_centroids(w, 8, "density")
    cdf = [(w <= c).float().mean().item() for c in density]
    assert np.allclose(cdf, (np.arange(8) + 0.5) / 8, atol=2e-3)  # evenly spaced in the CDF
    rand = S.init_centroids(w, 8, "random", generator=torch.Generator().manual_seed(0))
    assert all(bool((w == c).any()) for c in rand) and len(set(rand.tolist())) == 8


def test_kmeans_never_increases_inertia_and_is_deterministic():
    w = weights(seed=3)
    inertias = [S.kmeans(w, 8, "linear", iterations=i)[2] for i in range(6)]
    assert all(a >= b - 1e-9 for a, b in zip(inertias, inertias[1:]))
    a = S.kmeans(w, 8, "random", generator=torch.Generator().manual_seed(5))
    b = S.kmeans(w, 8, "random", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_kmeans_rejects_bad_input():
    with pytest.raises(ValueError, match="k must"):
        S.kmeans(weights(), 0)
    with pytest.raises(ValueError, match="k must"):
        S.kmeans(torch.ones(3), 4)
    with pytest.raises(ValueError, match="method"):
        S.init_centroids(weights(), 4, "kmeans++")
    with pytest.raises(ValueError, match="finite"):
        S.kmeans(torch.tensor([1.0, float("nan")]), 1)
    with pytest.raises(TypeError, match="floating"):
        S.kmeans(torch.arange(10), 2)


# --------------------------------------------------------------------------- shared layers

def pruned_mlp(seed=0):
    torch.manual_seed(seed)
    model = MLP((32, 16))
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.02] = 0.0  # some pruned weights
    return model


def test_shared_layers_use_at_most_2_to_the_bits_values_and_keep_zeros():
    model = pruned_mlp()
    shared = S.apply_sharing(model, {"fc1": 3, "fc2": 4}, init="density")
    w1, w2 = shared.fc1.weight, shared.fc2.weight
    assert len(torch.unique(w1[w1 != 0])) <= 8 and len(torch.unique(w2)) <= 16
    assert torch.equal(w1 == 0, model.fc1.weight == 0)
    assert isinstance(shared.fc3.weight, nn.Parameter)  # untouched layers stay plain
    assert not S.shared_layers(model)  # the original is not modified
    baked = S.bake(copy.deepcopy(shared))
    assert not S.shared_layers(baked) and torch.equal(baked.fc1.weight, w1)


def test_each_centroid_gradient_is_the_sum_of_its_members_gradients():
    model = S.apply_sharing(pruned_mlp(), {"fc1": 3})
    x = torch.randn(20, 1, 28, 28)
    p = S.shared_layers(model)["fc1"]
    weight = model.fc1.weight  # (32, 784): recomputed from the codebook
    weight.retain_grad()
    out = nn.functional.linear(x.flatten(1), weight, model.fc1.bias).pow(2).sum()
    out.backward()
    want = torch.zeros_like(p.codebook).index_add_(0, p.codes[p.mask], weight.grad[p.mask])
    torch.testing.assert_close(p.codebook.grad, want)


def test_apply_sharing_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        S.apply_sharing(pruned_mlp(), 0)
    with pytest.raises(ValueError, match="not Linear or Conv2d"):
        S.apply_sharing(pruned_mlp(), {"fc9": 4})
    shared = S.apply_sharing(pruned_mlp(), {"fc1": 2})
    with pytest.raises(ValueError, match="already parametrized"):
        S.apply_sharing(shared, {"fc1": 2})


# --------------------------------------------------------------------------- HashedNets

def test_hashed_layer_is_deterministic_and_stores_only_its_buckets():
    a, b = (S.HashedLinear(784, 300, 1000, bias=False, seed=7), S.HashedLinear(784, 300, 1000, bias=False, seed=7))
    assert torch.equal(a.index, b.index) and torch.equal(a.sign, b.sign)
    assert sum(p.numel() for p in a.parameters()) == 1000
    assert list(a.state_dict()) == ["weight"]  # the hashes are recomputed, never stored
    assert int(a.index.min()) >= 0 and int(a.index.max()) < 1000
    counts = torch.bincount(a.index.reshape(-1), minlength=1000).float()
    assert counts.std() / counts.mean() < 0.1  # entries spread evenly over the buckets
    assert abs(a.sign.mean().item()) < 0.01  # signs balanced
    c = S.HashedLinear(784, 300, 1000, seed=8)
    assert not torch.equal(a.index, c.index)


def test_hashed_layer_equals_a_dense_layer_with_its_virtual_weight():
    layer = S.HashedLinear(20, 7, 13, seed=3)
    x = torch.randn(5, 20)
    dense = nn.functional.linear(x, layer.sign * layer.weight[layer.index], layer.bias)
    torch.testing.assert_close(layer(x), dense)
    w = layer.virtual_weight()
    for i, j in [(0, 0), (3, 11), (6, 19)]:
        assert w[i, j] == layer.sign[i, j] * layer.weight[layer.index[i, j]]
    with pytest.raises(ValueError, match="buckets"):
        S.HashedLinear(20, 7, 0)


def test_tied_layers_share_one_parameter_and_accumulate_gradients():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    before = sum(p.numel() for p in model.parameters())
    S.tie_weights(model, ["0", "2"])
    assert model[0].weight is model[2].weight
    assert sum(p.numel() for p in model.parameters()) == before - 64
    model(torch.randn(3, 8)).sum().backward()
    assert model[0].weight.grad is not None
    with pytest.raises(ValueError, match="does not match"):
        S.tie_weights(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), ["0", "1"])


# --------------------------------------------------------------------------- the file format

@pytest.mark.parametrize("huffman", [True, False])
@pytest.mark.parametrize("index_bits", [3, 5, 8])
def test_save_load_round_trips_bitwise(tmp_path, huffman, index_bits):
    model = S.apply_sharing(pruned_mlp(), {"fc1": 4, "fc2": 5, "fc3": 5})
    path = tmp_path / "model.nncz"
    size = S.save(model, path, index_bits=index_bits, huffman=huffman)
    assert size == path.stat().st_size
    restored = S.load(path, MLP((32, 16)))
    want = S.bake(copy.deepcopy(model)).state_dict()
    for key, value in restored.state_dict().items():
        assert torch.equal(value, want[key]), key
    assert S.shared_layers(model) and model.fc1.weight.shape == (32, 784)  # saving left the model intact


@pytest.mark.parametrize("huffman", [True, False])
def test_dense_shared_layers_need_no_indices(tmp_path, huffman):
    torch.manual_seed(1)
    dense = S.apply_sharing(MLP((32, 16)), 2)  # every weight has a code
    size = S.save(dense, tmp_path / "d", huffman=huffman)
    restored = S.load(tmp_path / "d", MLP((32, 16)))
    want = S.bake(copy.deepcopy(dense)).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in restored.state_dict().items())
    weights = sum(m.weight.numel() for m in (dense.fc1, dense.fc2, dense.fc3))
    biases = sum(m.bias.numel() for m in (dense.fc1, dense.fc2, dense.fc3))
    if not huffman:  # 2 bits per weight, float32 biases and codebooks, and a header
        assert 0 < size - (weights * 2 // 8 + 4 * biases + 3 * 4 * 4) < 1500


def test_save_also_stores_pruned_and_convolutional_models(tmp_path):
    torch.manual_seed(0)
    model = LeNet5((4, 6), hidden=16)
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.05] = 0.0
    model = S.apply_sharing(model, {"conv1": 3, "conv2": 4})
    path = tmp_path / "lenet.nncz"
    S.save(model, path)
    restored = S.load(path, LeNet5((4, 6), hidden=16))
    want = S.bake(copy.deepcopy(model)).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in restored.state_dict().items())


def test_huffman_and_sparsity_make_files_smaller(tmp_path):
    model = S.apply_sharing(pruned_mlp(), {"fc1": 4})
    plain = S.save(model, tmp_path / "a", huffman=False)
    coded = S.save(model, tmp_path / "b", huffman=True)
    dense = S.save(MLP((32, 16)), tmp_path / "c")
    assert coded < plain < dense


def test_truncated_or_corrupted_files_are_rejected_and_nothing_is_loaded(tmp_path):
    model = S.apply_sharing(pruned_mlp(), {"fc1": 4})
    path = tmp_path / "m.nncz"
    S.save(model, path)
    data = path.read_bytes()
    target = MLP((32, 16))
    untouched = copy.deepcopy(target.state_dict())
    for broken in (data[:-1], data[: len(data) // 2], data[:20], b"", b"PK\x03\x04" + data[4:]):
        path.write_bytes(broken)
        with pytest.raises(S.CorruptFileError):
            S.load(path, target)
    for position in (5, 12, len(data) // 2, len(data) - 40):
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(S.CorruptFileError, match="checksum|version|magic"):
            S.load(path, target)
    assert all(torch.equal(v, untouched[k]) for k, v in target.state_dict().items())


# --------------------------------------------------------------------------- equal-budget MLPs

WEIGHTS = 784 * 1000 + 1000 * 10  # weights (not biases) of the dense 784-1000-10 network


def weights_of(model):
    """Trainable numbers outside biases: a hashed layer's buckets, both low-rank factors, the
    surviving (unmasked) entries of a randomly pruned layer."""
    from nncompress.pruning import masks_of

    masks = masks_of(model)
    total = 0
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            continue
        key = name.replace(".parametrizations.weight.original", ".weight")
        total += int(masks[key].sum()) if key in masks else p.numel()
    return total


@pytest.mark.parametrize("factor", [1 / 8, 1 / 64])
@pytest.mark.parametrize("method", ["hashed", "lowrank", "random_edges", "small"])
def test_budget_mlps_fit_the_budget_and_use_most_of_it(method, factor):
    model = S.budget_mlp(method, factor)
    used = weights_of(model)
    assert 0.85 * factor * WEIGHTS <= used <= factor * WEIGHTS + 1, used
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_budget_mlp_parts_are_what_they_claim():
    hashed = S.budget_mlp("hashed", 1 / 8)
    assert isinstance(hashed.fc1, S.HashedLinear) and hashed.fc1.buckets == 98_000 and hashed.fc2.buckets == 1_250
    assert sum(p.numel() for p in hashed.parameters()) == 98_000 + 1_250 + 1_010  # buckets + biases
    low = S.budget_mlp("lowrank", 1 / 64)
    assert (low.fc1.rank, low.fc2.rank) == (4, 4)  # 794,000 / 64 // (1784 + 1010) = 4
    assert S.budget_mlp("lowrank", 1 / 8).fc1.rank == 35
    random = S.budget_mlp("random_edges", 1 / 8)
    assert int(random.fc1.weight.count_nonzero()) == 98_000
    assert S.budget_mlp("small", 1 / 64).hidden == (15,)
    assert sum(p.numel() for p in S.budget_mlp("dense").parameters()) == WEIGHTS + 1_010


def test_budget_mlp_is_deterministic_for_a_seed():
    for method in S.BUDGET_METHODS:
        a, b = S.budget_mlp(method, 1 / 8, seed=3), S.budget_mlp(method, 1 / 8, seed=3)
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), (method, name)
    assert not torch.equal(S.budget_mlp("hashed", 1 / 8, seed=3).fc1.index, S.budget_mlp("hashed", 1 / 8, seed=4).fc1.index)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="pruned"), "method must be one of"),
    (dict(method="hashed", factor=0), r"factor must be a number in \(0, 1\]"),
    (dict(method="hashed", factor=1.5), r"factor must be a number in \(0, 1\]"),
    (dict(method="hashed", hidden=0), "hidden must be a positive int"),
])
def test_budget_mlp_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.budget_mlp(**kwargs)


def test_file_bytes_is_the_size_of_the_saved_file(tmp_path):
    model = S.apply_sharing(MLP((32,)), 3)
    assert S.file_bytes(model, index_bits=4) == S.save(model, tmp_path / "m", index_bits=4) == (tmp_path / "m").stat().st_size


def test_code_streams_are_what_save_codes(tmp_path):
    from nncompress import coding

    model = MLP((64,))
    with torch.no_grad():
        model.fc1.weight[:, ::3] = 0  # a pruned layer: relative indices
    model = S.apply_sharing(model, 3)
    streams = S.code_streams(model, index_bits=3)
    assert set(streams["fc1"]) == {"gaps", "values"} and set(streams["fc2"]) == {"codes"}
    layer = S.shared_layers(model)["fc1"]
    flat = coding.relative_decode(streams["fc1"]["gaps"], streams["fc1"]["values"], layer.codes.numel())
    assert torch.equal(flat, torch.where(layer.mask, layer.codes + 1, 0).reshape(-1))
    # the Huffman-coded file holds exactly the streams' Huffman bits (plus header, codebooks, biases)
    bits = sum(coding.HuffmanCode.from_symbols(s).mean_length(coding.symbol_counts(s)) * len(s)
               for layer_streams in streams.values() for s in layer_streams.values())
    packed = S.save(model, tmp_path / "packed", index_bits=3, huffman=False)
    coded = S.save(model, tmp_path / "coded", index_bits=3)
    assert coded < packed and coded >= bits / 8
    with pytest.raises(ValueError, match=r"index_bits must be an int in \[1, 16\]"):
        S.code_streams(model, index_bits=0)


def test_hashed_gradient_sums_each_buckets_entries():
    layer = S.HashedLinear(7, 5, 6, seed=2).double()
    x = torch.randn(4, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w: nn.functional.linear(x, S._HashedGather.apply(w, layer.index, layer.sign.double())),
                                    (layer.weight.detach().clone().requires_grad_(),))
    layer(x).pow(2).sum().backward()
    reference = layer.weight.detach().clone().requires_grad_()
    nn.functional.linear(x, layer.sign.double() * reference[layer.index], layer.bias).pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, reference.grad)
