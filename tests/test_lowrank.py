"""nncompress.lowrank against torch.linalg and tensorly, and the optimality the math guarantees."""

import pytest
import tensorly as tl
import torch
from torch import nn

from nncompress import lowrank as L
from nncompress import measure, models


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape,rank", [((30, 20), 1), ((30, 20), 7), ((20, 30), 20), ((64, 64), 10)])
def test_truncation_error_is_the_eckart_young_tail(shape, rank):
    w = torch.randn(*shape, generator=_gen(rank))
    a, b = L.svd_factors(w, rank)
    assert a.shape == (shape[0], rank) and b.shape == (rank, shape[1])
    s = torch.linalg.svdvals(w.double())
    err = torch.linalg.norm((w - a @ b).double())
    assert abs(float(err) - L.truncation_error(s, rank)) < 1e-4 * float(torch.linalg.norm(w))
    assert torch.linalg.matrix_rank(a @ b) == rank


def test_svd_factors_are_no_worse_than_any_other_rank_r_matrix():
    w = torch.randn(25, 15, generator=_gen(1))
    a, b = L.svd_factors(w, 4)
    best = torch.linalg.norm(w - a @ b)
    for seed in range(20):
        g = _gen(seed + 100)
        a2, b2 = a + 0.01 * torch.randn(a.shape, generator=g), b + 0.01 * torch.randn(b.shape, generator=g)
        assert torch.linalg.norm(w - a2 @ b2) >= best - 1e-5


def test_energy_and_break_even_ranks():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert L.energy_rank(s, 9 / 14) == 1 and L.energy_rank(s, 0.7) == 2 and L.energy_rank(s, 1.0) == 3
    assert L.break_even_rank(300, 784) == 216  # 216 * 1084 < 235,200 <= 217 * 1084
    assert 216 * 1084 < 300 * 784 <= 217 * 1084
    with pytest.raises(ValueError, match="energy"):
        L.energy_rank(s, 0.0)
    with pytest.raises(ValueError, match="energy"):
        L.energy_rank(s, 1.5)
    with pytest.raises(ValueError, match="singular_values"):
        L.energy_rank(torch.tensor([]), 0.9)
    with pytest.raises(ValueError, match="singular_values"):
        L.truncation_error(torch.tensor([]), 1)
    assert L.energy_rank(torch.zeros(3), 0.9) == 1  # an all-zero spectrum: rank 1 keeps everything


def test_factorized_linear_equals_dense_layer_with_reconstructed_weight():
    torch.manual_seed(2)
    linear = nn.Linear(50, 40)
    x = torch.randn(8, 50, generator=_gen(2))
    low = L.factorize_linear(linear, rank=10)
    dense = nn.Linear(50, 40)
    dense.load_state_dict({"weight": low.weight.detach(), "bias": linear.bias.detach()})
    assert torch.allclose(low(x), dense(x), atol=1e-5)
    assert measure.count_params(low) == 10 * (50 + 40) + 40
    assert measure.count_flops(low, (50,)) == 2 * 10 * (50 + 40)
    assert L.factorize_linear(linear, energy=1.0).rank == 40
    full = L.factorize_linear(linear, rank=40)
    assert torch.allclose(full(x), linear(x), atol=1e-5)


def test_data_aware_beats_plain_svd_on_correlated_inputs():
    g = _gen(3)
    mixing = torch.randn(40, 40, generator=g) * torch.logspace(0, -3, 40)  # anisotropic, correlated features
    x = torch.randn(2000, 40, generator=g) @ mixing.T
    torch.manual_seed(3)
    linear = nn.Linear(40, 30)
    for rank in (2, 5, 10):
        plain = L.factorize_linear(linear, rank=rank)
        aware = L.factorize_linear(linear, rank=rank, inputs=x)
        target = linear(x)
        err_plain = (plain(x) - target).norm()
        err_aware = (aware(x) - target).norm()
        assert err_aware < 0.9 * err_plain
        assert (aware.weight - linear.weight).norm() > (plain.weight - linear.weight).norm()  # worse on weights


def test_data_aware_is_optimal_among_rank_r_on_the_data():
    g = _gen(4)
    x = torch.randn(500, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    linear = nn.Linear(12, 9).double()
    aware = L.factorize_linear(linear, rank=3, inputs=x)  # damp=0: exact on the data
    best = ((aware.weight - linear.weight) @ x.T).norm()
    for seed in range(20):
        gg = _gen(seed + 7)
        w2 = (aware.up.weight + 1e-3 * torch.randn(9, 3, generator=gg, dtype=torch.float64)) @ \
             (aware.down.weight + 1e-3 * torch.randn(3, 12, generator=gg, dtype=torch.float64))
        assert ((w2 - linear.weight) @ x.T).norm() >= best - 1e-9


def test_factorize_model_by_rank_energy_and_data():
    model = models.lenet_300_100().eval()
    x = torch.randn(64, 1, 28, 28, generator=_gen(5))
    small = L.factorize(model, {"fc1": 20, "fc2": 10})
    assert isinstance(small.fc1, L.LowRankLinear) and small.fc1.rank == 20 and small.fc2.rank == 10
    assert isinstance(small.fc3, nn.Linear) and isinstance(model.fc1, nn.Linear)  # original untouched
    assert small(x).shape == (64, 10)
    by_energy = L.factorize(model, energy=0.5, layers=["fc1"])
    assert by_energy.fc1.rank == L.energy_rank(torch.linalg.svdvals(model.fc1.weight.double()), 0.5)
    aware = L.factorize(model, {"fc1": 20}, inputs=x)
    inputs = L.layer_inputs(model, x, ["fc1"])["fc1"]
    assert inputs.shape == (64, 784)
    err = lambda m: (m.fc1(inputs) - model.fc1(inputs)).norm()  # noqa: E731
    assert err(aware) < err(small)


def test_data_aware_from_a_gram_or_from_batches_equals_from_inputs():
    model = models.lenet_300_100().eval()
    x = torch.randn(96, 1, 28, 28, generator=_gen(6))
    from_inputs = L.factorize(model, {"fc1": 12, "fc2": 8}, inputs=x, damp=0.01)
    from_batches = L.factorize(model, {"fc1": 12, "fc2": 8}, batches=[x[:40], x[40:]], damp=0.01)  # any batch sizes
    # 96 inputs span 96 of fc1's 784 directions: the factors are determined on what the data excites
    rows = L.layer_inputs(model, x, ["fc1"])["fc1"]
    with torch.no_grad():
        assert torch.allclose(from_inputs(x), from_batches(x), atol=1e-4)
        assert torch.allclose(from_inputs.fc1(rows), from_batches.fc1(rows), atol=1e-4)
        by_gram = L.factorize_linear(model.fc1, rank=12, gram=7.0 * rows.double().T @ rows.double(), damp=0.01)  # any scale
        assert torch.allclose(by_gram(rows), from_inputs.fc1(rows), atol=1e-4)


def test_data_aware_singular_values_give_the_output_error_of_the_data_aware_factors():
    g = _gen(9)
    x = torch.randn(300, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g, dtype=torch.float64)
    linear = nn.Linear(16, 10).double()
    gram = x.T @ x
    values = L.data_aware_singular_values(linear.weight, gram, damp=0.0) * gram.diagonal().mean().sqrt()
    assert torch.allclose(values, torch.linalg.svdvals(linear.weight.detach() @ x.T), rtol=1e-8)
    aware = L.factorize_linear(linear, rank=4, gram=gram, damp=0.0)
    error = ((aware.weight.detach() - linear.weight.detach()) @ x.T).norm()
    assert float(error) == pytest.approx(L.truncation_error(values, 4), rel=1e-6)
    with pytest.raises(ValueError, match="gram"):
        L.data_aware_singular_values(linear.weight, torch.eye(3))


def test_factorized_embedding_is_the_truncated_svd_and_counts_favour_frequent_tokens():
    g = _gen(8)
    embedding = nn.Embedding(50, 12, padding_idx=0)
    with torch.no_grad():
        embedding.weight.copy_(torch.randn(50, 12, generator=g) @ torch.diag(torch.logspace(0, -1, 12)))
    table = embedding.weight.detach()
    full = L.factorize_embedding(embedding, 12)
    assert torch.allclose(full.weight, table, atol=1e-5) and full.padding_idx == 0
    ids = torch.tensor([[3, 7, 0], [49, 1, 2]])
    assert torch.allclose(full(ids), embedding(ids), atol=1e-5)
    small = L.factorize_embedding(embedding, 4)
    assert measure.count_params(small) == 4 * (50 + 12)
    error = float((small.weight.detach() - table).norm())
    assert error == pytest.approx(L.truncation_error(torch.linalg.svdvals(table.double()), 4), rel=1e-4)  # Eckart-Young
    counts = torch.zeros(50)
    counts[:10] = 100.0
    counts[10:] = 1.0
    weighted = L.factorize_embedding(embedding, 4, counts=counts)
    frequent = lambda m: float((m.weight.detach()[:10] - table[:10]).norm())  # noqa: E731
    assert frequent(weighted) < frequent(small)


@pytest.mark.parametrize("call,match", [
    (lambda: L.factorize_embedding(nn.Linear(3, 4), 2), "nn.Embedding"),
    (lambda: L.factorize_embedding(nn.Embedding(5, 4), 5), "rank"),
    (lambda: L.factorize_embedding(nn.Embedding(5, 4), 2, counts=torch.zeros(5)), "counts"),
    (lambda: L.factorize_embedding(nn.Embedding(5, 4), 2, counts=-torch.ones(5)), "counts"),
    (lambda: L.factorize_embedding(nn.Embedding(5, 4), 2, counts=torch.ones(4)), "counts"),
    (lambda: L.factorize_linear(nn.Linear(4, 5), rank=2, gram=torch.eye(3)), "gram"),
    (lambda: L.factorize_linear(nn.Linear(4, 5), rank=2, gram=torch.eye(4), damp=-0.1), "damp"),
    (lambda: L.factorize_linear(nn.Linear(4, 5), rank=2, inputs=torch.randn(9, 4), gram=torch.eye(4)), "not both"),
    (lambda: L.factorize(models.lenet_300_100(), {"fc1": 3}, inputs=torch.randn(2, 784), batches=[]), "not both"),
])
def test_factorization_inputs_are_checked(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


@pytest.mark.parametrize("call,match", [
    (lambda: L.svd_factors(torch.randn(5, 4), 5), "rank"),
    (lambda: L.svd_factors(torch.randn(5, 4), 0), "rank"),
    (lambda: L.svd_factors(torch.randn(5), 1), "2-d"),
    (lambda: L.factorize_linear(nn.Linear(4, 5), rank=2, energy=0.5), "exactly one"),
    (lambda: L.factorize_linear(nn.Linear(4, 5), rank=2, inputs=torch.randn(10, 3)), "features"),
    (lambda: L.factorize(models.lenet_300_100(), {"fc9": 3}), "fc9"),
    (lambda: L.factorize(models.lenet_300_100()), "ranks or energy"),
    (lambda: L.factorize(models.lenet_300_100(), {"fc1": 3}, energy=0.5), "ranks or energy"),
    (lambda: L.factorize(models.lenet_300_100(), {"fc1": 3}, layers="fc2"), "layers"),
    (lambda: L.factorize(models.lenet_300_100(), {"fc*": 0}), "ranks"),
    (lambda: L.factorize(models.lenet_300_100(), energy=0.0), "energy"),
    (lambda: L.factorize(models.lenet_300_100(), {"fc1": 3}, inputs=torch.zeros(0, 784)), "inputs"),
    (lambda: L.factorize_kronecker(models.lenet_300_100(), {"fc1": ((15, 28), (20, 27))}), "factor"),
    (lambda: L.factorize_kronecker(models.lenet_300_100(), {"fc9": ((15, 28), (20, 28))}), "fc9"),
    (lambda: L.nearest_kronecker(torch.randn(6, 8), (2, 3), (3, 3)), "factor"),
    (lambda: L.nearest_kronecker(torch.randn(6, 8), (2, 2), (3, 4), rank=5), "rank"),
    (lambda: L.tucker2_conv(nn.Conv2d(3, 8, 3), (9, 2)), "ranks"),
    (lambda: L.decompose_convs(models.lenet5(), "svd", {"conv1": 3}), "method"),
    (lambda: L.decompose_convs(models.lenet5(), "cp", {"conv*": 0}), "rank"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: L.factorize_linear(nn.Conv2d(3, 3, 3), rank=1),
    lambda: L.cp_conv(nn.Linear(3, 3), 2),
    lambda: L.kronecker_linear(nn.Conv2d(3, 3, 1), (1, 1), (3, 3)),
    lambda: L.decompose_convs(models.lenet5(), "cp", {"fc1": 3}),  # names a Linear layer
    lambda: L.factorize(models.lenet5(), {"conv1": 3}),  # names a Conv2d layer
    lambda: L.factorize_kronecker(models.lenet_300_100(), {"fc1": (15, 28)}),  # not a pair of shapes
    lambda: L.cp_conv(nn.Conv2d(3, 3, 3), 2.5),
    lambda: L.svd_factors([[1.0]], 1),
])
def test_unsupported_layers_raise_type_error(call):
    with pytest.raises(TypeError):
        call()


# --------------------------------------------------------------------------- convolutions

@pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs")
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_cp_conv_equals_conv_with_tensorly_reconstruction(stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 5, stride=stride, padding=padding).double()
    x = torch.randn(3, 6, 14, 14, generator=_gen(6), dtype=torch.float64)
    from tensorly.decomposition import parafac
    with tl.backend_context("pytorch"):
        cp = parafac(conv.weight.detach(), 8, n_iter_max=300, init="svd", random_state=0, normalize_factors=True)
        kernel = tl.cp_to_tensor(cp)
    seq = L.cp_conv(conv, 8).double()
    assert [type(m) for m in seq] == [nn.Conv2d] * 4 and seq[1].groups == 8
    ref = nn.functional.conv2d(x, kernel, conv.bias, stride, padding)
    assert torch.allclose(seq(x), ref, atol=1e-5)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 2)])
def test_tucker2_conv_equals_conv_with_tensorly_reconstruction(stride, padding):
    torch.manual_seed(1)
    conv = nn.Conv2d(12, 16, 3, stride=stride, padding=padding).double()
    x = torch.randn(2, 12, 11, 11, generator=_gen(7), dtype=torch.float64)
    from tensorly.decomposition import partial_tucker
    with tl.backend_context("pytorch"):
        (core, factors), _ = partial_tucker(conv.weight.detach(), [5, 4], modes=[0, 1], init="svd",
                                            n_iter_max=100, tol=1e-8)
        kernel = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
    seq = L.tucker2_conv(conv, (5, 4)).double()
    ref = nn.functional.conv2d(x, kernel, conv.bias, stride, padding)
    assert torch.allclose(seq(x), ref, atol=1e-5)
    assert measure.count_params(seq) == 12 * 4 + 4 * 5 * 9 + 5 * 16 + 16


def test_full_rank_tucker2_is_exact_and_ranks_by_energy():
    conv = nn.Conv2d(4, 6, 3)
    x = torch.randn(2, 4, 9, 9, generator=_gen(8))
    assert torch.allclose(L.tucker2_conv(conv, (6, 4))(x), conv(x), atol=1e-5)
    assert L.tucker2_ranks(conv, 1.0) == (6, 4)
    r_out, r_in = L.tucker2_ranks(conv, 0.5)
    assert 1 <= r_out < 6 and 1 <= r_in <= 4


def test_decompose_convs_replaces_layers_in_lenet5():
    model = models.lenet5().eval()
    x = torch.randn(4, 1, 28, 28, generator=_gen(9))
    cp = L.decompose_convs(model, "cp", {"conv2": 8})
    tucker = L.decompose_convs(model, "tucker2", {"conv1": (20, 1), "conv2": (50, 20)})  # full rank: exact
    assert isinstance(cp.conv2, nn.Sequential) and isinstance(model.conv2, nn.Conv2d)
    assert cp(x).shape == (4, 10)
    assert torch.allclose(tucker(x), model(x), atol=1e-4)


# --------------------------------------------------------------------------- Kronecker

@pytest.mark.parametrize("rank", [1, 3])
def test_kronecker_layer_equals_dense_kronecker_matmul(rank):
    g = _gen(10)
    a, b, bias = torch.randn(rank, 4, 6, generator=g), torch.randn(rank, 5, 7, generator=g), torch.randn(20, generator=g)
    layer = L.KroneckerLinear(a, b, bias)
    dense = sum(torch.kron(a[k], b[k]) for k in range(rank))  # (20, 42)
    x = torch.randn(9, 42, generator=g)
    assert torch.allclose(layer(x), x @ dense.T + bias, atol=1e-5)
    assert torch.allclose(layer.weight, dense)
    assert measure.count_params(layer) == rank * (24 + 35) + 20


def test_rearrangement_maps_kronecker_products_to_rank_one():
    g = _gen(11)
    a, b = torch.randn(3, 4, generator=g), torch.randn(5, 2, generator=g)
    r = L.kronecker_rearrange(torch.kron(a, b), (3, 4), (5, 2))
    assert torch.allclose(r, torch.outer(a.reshape(-1), b.reshape(-1)), atol=1e-6)


def test_nearest_kronecker_recovers_exact_products_and_is_optimal():
    g = _gen(12)
    a, b = torch.randn(3, 4, generator=g), torch.randn(5, 2, generator=g)
    fa, fb = L.nearest_kronecker(torch.kron(a, b), (3, 4), (5, 2))
    assert torch.allclose(torch.kron(fa[0], fb[0]), torch.kron(a, b), atol=1e-5)
    w = torch.randn(15, 8, generator=g, dtype=torch.float64)
    fa, fb = L.nearest_kronecker(w, (3, 4), (5, 2), rank=2)
    approx = lambda x, y: sum(torch.kron(x[k], y[k]) for k in range(2))  # noqa: E731
    best = torch.linalg.norm(w - approx(fa, fb))
    s = torch.linalg.svdvals(L.kronecker_rearrange(w, (3, 4), (5, 2)))
    assert abs(float(best) - L.truncation_error(s, 2)) < 1e-9
    for seed in range(50):
        gg = _gen(seed + 200)
        pa = fa + 1e-2 * torch.randn(fa.shape, generator=gg, dtype=torch.float64)
        pb = fb + 1e-2 * torch.randn(fb.shape, generator=gg, dtype=torch.float64)
        assert torch.linalg.norm(w - approx(pa, pb)) >= best - 1e-12


def test_kronecker_linear_from_a_linear_layer():
    linear = nn.Linear(784, 300)
    layer = L.kronecker_linear(linear, (15, 28), (20, 28), rank=4)
    x = torch.randn(5, 784, generator=_gen(13))
    assert torch.allclose(layer(x), x @ layer.weight.T + linear.bias, atol=1e-4)
    assert layer.in_features == 784 and layer.out_features == 300


# --------------------------------------------------------------------------- model-level selection

def test_factorize_selects_layers_by_pattern_and_type_and_leaves_the_model_untouched():
    model = models.lenet_300_100().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(32, 1, 28, 28, generator=_gen(14))
    small = L.factorize(model, {"fc*": 8, "fc3": 4}, inputs=x)  # the later key wins for fc3
    assert [small.fc1.rank, small.fc2.rank, small.fc3.rank] == [8, 8, 4]
    by_type = L.factorize(model, {nn.Linear: 5})
    assert all(isinstance(m, L.LowRankLinear) and m.rank == 5 for m in (by_type.fc1, by_type.fc2, by_type.fc3))
    by_energy = L.factorize(model, energy=0.9, layers="fc[12]")
    assert isinstance(by_energy.fc3, nn.Linear) and isinstance(by_energy.fc2, L.LowRankLinear)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(isinstance(m, nn.Linear) for m in (model.fc1, model.fc2, model.fc3))


def test_in_place_variants_equal_the_copies():
    model = models.lenet5().eval()
    x = torch.randn(3, 1, 28, 28, generator=_gen(15))

    def twin():
        other = models.lenet5().eval()
        other.load_state_dict(model.state_dict())
        return other

    with torch.no_grad():
        pairs = [(L.factorize(model, {"fc1": 7}), L.factorize_(twin(), {"fc1": 7})),
                 (L.decompose_convs(model, "tucker2", {"conv1": (5, 1)}),
                  L.decompose_convs_(twin(), "tucker2", {"conv1": (5, 1)})),
                 (L.factorize_kronecker(model, {"fc2": ((2, 20), (5, 25))}),
                  L.factorize_kronecker_(twin(), {"fc2": ((2, 20), (5, 25))}))]
        for copy_, in_place in pairs:
            torch.testing.assert_close(copy_(x), in_place(x))
    assert isinstance(model.fc1, nn.Linear) and isinstance(model.conv2, nn.Conv2d)


def test_layer_inputs_treat_every_token_as_a_row():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).train()
    x = torch.randn(5, 7, 6, generator=_gen(16))  # (batch, tokens, features)
    seen = L.layer_inputs(model, x, "2", batch_size=2)
    assert seen["2"].shape == (35, 4) and model.training
    torch.testing.assert_close(seen["2"], torch.relu(model[0](x)).reshape(-1, 4))


def test_factorize_kronecker_on_lenet_equals_the_nearest_kronecker_factors():
    model = models.lenet_300_100()
    kron = L.factorize_kronecker(model, {"fc1": ((15, 28), (20, 28))}, rank=2)
    a, b = L.nearest_kronecker(model.fc1.weight, (15, 28), (20, 28), rank=2)
    assert isinstance(kron.fc1, L.KroneckerLinear) and isinstance(model.fc1, nn.Linear)
    torch.testing.assert_close(kron.fc1.weight, torch.kron(a[0], b[0]) + torch.kron(a[1], b[1]))
    assert kron(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs")
def test_cp_conv_is_reproducible_by_seed():
    conv = nn.Conv2d(4, 6, 3)
    one, two = (L.cp_conv(conv, 12, seed=3, n_iter_max=5) for _ in range(2))  # rank 12 > 3: random completion
    assert all(torch.equal(p, q) for p, q in zip(one.parameters(), two.parameters()))
