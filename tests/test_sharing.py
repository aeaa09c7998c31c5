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
