"""nncompress.sharing: k-means against scikit-learn, centroid gradients, layer selection on any
model, HashedNets, tied weights, and the composition prune -> share -> save/load."""

import copy

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from torch import nn

from nncompress import measure, parametrizations, pruning
from nncompress import sharing as S
from nncompress.fileformat import load, save
from nncompress.models import MLP


def weights(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([0.05 * torch.randn(n, generator=g), 0.3 * torch.randn(n // 10, generator=g)])


def inputs(n=20, seed=2):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- k-means

@pytest.mark.parametrize("init", S.INITS)
@pytest.mark.parametrize("k", [4, 16, 32])
def test_kmeans_inertia_matches_scikit_learn_from_the_same_start(init, k):
    w = weights()
    start = S.init_centroids(w, k, init, seed=1)
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
    rand = S.init_centroids(w, 8, "random", seed=0)
    assert all(bool((w == c).any()) for c in rand) and len(set(rand.tolist())) == 8


def test_kmeans_never_increases_inertia_and_is_deterministic_for_a_seed():
    w = weights(seed=3)
    inertias = [S.kmeans(w, 8, "linear", iterations=i)[2] for i in range(6)]
    assert all(a >= b - 1e-9 for a, b in zip(inertias, inertias[1:]))
    a, b = S.kmeans(w, 8, "random", seed=5), S.kmeans(w, 8, "random", seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # an int seed is a fresh generator with that seed
    c = S.kmeans(w, 8, "random", seed=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], c[0])


@pytest.mark.parametrize("call, error, match", [
    (lambda: S.kmeans(weights(), 0), ValueError, "k must be an int in"),
    (lambda: S.kmeans(torch.ones(3), 4), ValueError, r"k must be an int in \[1, 3\]"),
    (lambda: S.kmeans(weights(), 2.0), TypeError, "k must be an int"),
    (lambda: S.init_centroids(weights(), 4, "kmeans++"), ValueError, "method must be one of"),
    (lambda: S.kmeans(torch.tensor([1.0, float("nan")]), 1), ValueError, "finite"),
    (lambda: S.kmeans(torch.arange(10), 2), TypeError, "floating"),
    (lambda: S.kmeans(torch.zeros(0), 1), ValueError, "values must not be empty"),
    (lambda: S.kmeans(weights(), 4, torch.zeros(3)), ValueError, "init must hold k = 4 centroids"),
    (lambda: S.kmeans(weights(), 4, iterations=-1), ValueError, "iterations"),
    (lambda: S.kmeans(weights(), 4, tol=-1.0), ValueError, "tol"),
    (lambda: S.init_centroids(weights(), 4, "random", seed=-1), ValueError, "seed"),
    (lambda: S.init_centroids(weights(), 4, "random", seed="7"), TypeError, "seed"),
])
def test_kmeans_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- shared layers

def pruned_mlp(seed=0):
    torch.manual_seed(seed)
    model = MLP((32, 16))
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.02] = 0.0  # some pruned weights
    return model


def test_shared_layers_use_at_most_2_to_the_bits_values_and_keep_zeros():
    model = pruned_mlp()
    before = copy.deepcopy(model.state_dict())
    shared = S.apply_sharing(model, {"fc1": 3, "fc2": 4}, init="density")
    w1, w2 = shared.fc1.weight, shared.fc2.weight
    assert len(torch.unique(w1[w1 != 0])) <= 8 and len(torch.unique(w2)) <= 16
    assert torch.equal(w1 == 0, model.fc1.weight == 0)
    assert isinstance(shared.fc3.weight, nn.Parameter)  # untouched layers stay plain
    assert not S.shared_layers(model)  # the original is not modified
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    baked = parametrizations.bake(shared, kind=S.SharedWeight)
    assert not S.shared_layers(baked) and torch.equal(baked.fc1.weight, w1)
    assert S.shared_layers(shared)  # baking a copy leaves the shared model as it was


def test_each_layers_codebook_is_the_kmeans_of_its_non_zero_weights():
    model = pruned_mlp()
    shared = S.apply_sharing(model, 3, layers="fc1")
    alive = model.fc1.weight.detach()[model.fc1.weight != 0]
    centroids, labels, _ = S.kmeans(alive, 8, "linear", iterations=100)
    p = S.shared_layers(shared)["fc1"]
    assert torch.equal(p.codebook.detach(), centroids) and torch.equal(p.codes[p.mask], labels)


def test_layers_are_chosen_by_name_pattern_type_or_a_bits_mapping():
    model = nn.Sequential()
    model.add_module("embed", nn.Embedding(10, 8))
    model.add_module("proj", nn.Linear(8, 8))
    model.add_module("head", nn.Linear(8, 3))
    assert list(S.shared_layers(S.apply_sharing(model, 2))) == ["proj", "head"]
    assert list(S.shared_layers(S.apply_sharing(model, 2, layers="h*"))) == ["head"]
    assert list(S.shared_layers(S.apply_sharing(model, 2, layers=nn.Linear))) == ["proj", "head"]
    widths = S.apply_sharing(model, {"*": 1, "head": 2})  # later keys override earlier ones
    assert {n: len(p.codebook) for n, p in S.shared_layers(widths).items()} == {"proj": 2, "head": 4}


def test_apply_sharing_in_place_changes_the_model_itself():
    model = pruned_mlp()
    assert S.apply_sharing_(model, 2, layers="fc3") is model
    assert list(S.shared_layers(model)) == ["fc3"]


def test_each_centroid_gradient_is_the_sum_of_its_members_gradients():
    model = S.apply_sharing(pruned_mlp(), {"fc1": 3})
    p = S.shared_layers(model)["fc1"]
    weight = model.fc1.weight  # (32, 784): recomputed from the codebook
    weight.retain_grad()
    out = nn.functional.linear(inputs().flatten(1), weight, model.fc1.bias).pow(2).sum()
    out.backward()
    want = torch.zeros_like(p.codebook).index_add_(0, p.codes[p.mask], weight.grad[p.mask])
    torch.testing.assert_close(p.codebook.grad, want)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(bits=0), ValueError, r"bits must be an int in \[1, 16\]"),
    (dict(bits=2.5), TypeError, "bits must be an int"),
    (dict(bits={"fc1": 17}), ValueError, r"bits\['fc1'\] must be an int in \[1, 16\]"),
    (dict(bits={"fc9": 4}), ValueError, "no layer named 'fc9'"),
    (dict(bits=4, layers="conv*"), ValueError, "pattern 'conv\\*' matches no"),
    (dict(bits=4, layers="dropout"), TypeError, "Dropout"),
    (dict(bits={"fc1": 4}, layers="fc1"), ValueError, "not both"),
    (dict(bits=4, init="kmeans++"), ValueError, "init must be one of"),
    (dict(bits=4, iterations=-1), ValueError, "iterations"),
    (dict(bits=4, seed=None), TypeError, "seed"),
])
def test_apply_sharing_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        S.apply_sharing(pruned_mlp(), **kwargs)


def test_apply_sharing_refuses_parametrized_or_empty_layers_and_changes_nothing():
    shared = S.apply_sharing(pruned_mlp(), {"fc1": 2})
    with pytest.raises(ValueError, match="fc1 is already parametrized; bake it first"):
        S.apply_sharing_(shared, 2)
    assert list(S.shared_layers(shared)) == ["fc1"]  # fc2 and fc3 were checked first, not shared
    masked = pruning.prune_magnitude(MLP((8,)), 0.5)
    with pytest.raises(ValueError, match="already parametrized"):
        S.apply_sharing(masked, 2)
    empty = MLP((8,))
    nn.init.zeros_(empty.fc2.weight)
    with pytest.raises(ValueError, match="fc2 has no non-zero weight"):
        S.apply_sharing(empty, 2)


def test_shared_weight_checks_its_codes():
    with pytest.raises(ValueError, match="same shape"):
        S.SharedWeight(torch.zeros(4), torch.zeros(2, 3, dtype=torch.int64), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 3\]"):
        S.SharedWeight(torch.zeros(4), torch.full((2, 2), 4), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="codebook"):
        S.SharedWeight([0.0, 1.0], torch.zeros(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.bool))


# --------------------------------------------------------------------------- HashedNets

def test_hashed_layer_is_deterministic_and_stores_only_its_buckets():
    torch.manual_seed(0)
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
    torch.manual_seed(0)
    layer = S.HashedLinear(20, 7, 13, seed=3)
    x = torch.randn(5, 20, generator=torch.Generator().manual_seed(1))
    dense = nn.functional.linear(x, layer.sign * layer.weight[layer.index], layer.bias)
    torch.testing.assert_close(layer(x), dense)
    w = layer.virtual_weight()
    for i, j in [(0, 0), (3, 11), (6, 19)]:
        assert w[i, j] == layer.sign[i, j] * layer.weight[layer.index[i, j]]


@pytest.mark.parametrize("call, error, match", [
    (lambda: S.HashedLinear(20, 7, 0), ValueError, "buckets must be an int >= 1"),
    (lambda: S.HashedLinear(20, 0, 3), ValueError, "out_features"),
    (lambda: S.hash_indices((3, 4), 5, seed=2**32), ValueError, "seed"),
    (lambda: S.hash_indices((3, 4), 5.0), TypeError, "buckets"),
])
def test_hashing_rejects_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_hashed_gradient_sums_each_buckets_entries():
    from nncompress.sharing.hashing import _HashedGather

    torch.manual_seed(0)
    layer = S.HashedLinear(7, 5, 6, seed=2).double()
    x = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda w: nn.functional.linear(x, _HashedGather.apply(w, layer.index, layer.sign.double())),
                                    (layer.weight.detach().clone().requires_grad_(),))
    layer(x).pow(2).sum().backward()
    reference = layer.weight.detach().clone().requires_grad_()
    nn.functional.linear(x, layer.sign.double() * reference[layer.index], layer.bias).pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, reference.grad)


# --------------------------------------------------------------------------- tied weights

def test_tied_layers_share_one_parameter_and_accumulate_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    before = sum(p.numel() for p in model.parameters())
    tied = S.tie_weights(model, ["0", "2"])
    assert tied[0].weight is tied[2].weight and model[0].weight is not model[2].weight  # the input is untouched
    assert sum(p.numel() for p in tied.parameters()) == before - 64
    assert torch.equal(tied[2].weight, model[0].weight)  # the first layer's weight, in module order
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    tied(x).sum().backward()
    # the shared gradient is the sum of what each layer would get with its own copy
    untied = copy.deepcopy(model)
    untied[2].weight = nn.Parameter(model[0].weight.detach().clone())
    untied(x).sum().backward()
    torch.testing.assert_close(tied[0].weight.grad, untied[0].weight.grad + untied[2].weight.grad)
    assert S.tie_weights_(model, nn.Linear) is model and model[0].weight is model[2].weight
    twin = copy.deepcopy(model)
    assert twin[0].weight is twin[2].weight  # the tie survives copying


@pytest.mark.parametrize("model, layers, error, match", [
    (nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), ["0", "1"], ValueError, "does not match"),
    (nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), ["0"], ValueError, "at least two"),
    (nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), None, ValueError, "at least two"),
    (nn.Sequential(nn.Linear(8, 8), nn.ReLU()), ["0", "1"], TypeError, "ReLU"),
    (nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), ["0", "5"], ValueError, "no layer named '5'"),
])
def test_tie_weights_rejects_bad_layers(model, layers, error, match):
    with pytest.raises(error, match=match):
        S.tie_weights(model, layers)


# --------------------------------------------------------------------------- composition

def test_prune_then_share_then_save_and_load_compose(tmp_path):
    torch.manual_seed(0)
    model = MLP((300, 100))
    pruned = pruning.prune_magnitude(model, 0.9)  # a new model with masks attached
    plain = parametrizations.bake(pruned)  # masks baked into exact zeros
    shared = S.apply_sharing(plain, 4)
    path = tmp_path / "deep.nncz"
    size = save(shared, path, huffman=False)
    restored = load(path, MLP((300, 100)))
    x = inputs(64)
    with torch.no_grad():
        assert torch.equal(restored(x), shared(x))  # bitwise the compressed model
    for name in ("fc1", "fc2", "fc3"):
        layer, source = restored.get_submodule(name), plain.get_submodule(name)
        assert torch.equal(layer.weight == 0, source.weight == 0)  # exactly the pruned entries
        assert int(torch.count_nonzero(layer.weight)) == layer.weight.numel() - round(0.9 * layer.weight.numel())
        assert len(torch.unique(layer.weight[layer.weight != 0])) <= 16
    # each surviving weight costs at most a 5-bit index and a 5-bit code (16 centroids and the
    # zero symbol), against 32 bits for every weight of the float model: far below 1/10
    assert size < measure.serialized_bytes(model) / 20
    assert not parametrizations.find(model)  # the input model was left plain throughout
