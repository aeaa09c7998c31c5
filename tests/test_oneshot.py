"""One-shot compression with calibration data: statistics, GPTQ, SparseGPT and Wanda.

GPTQ and SparseGPT are checked against a direct transcription of the updates their papers
derive (Optimal Brain Surgeon with the inverse Hessian eliminated one column at a time, no
Cholesky factor, no blocks), and against the properties they are built for.
"""

import pytest
import torch
from torch import nn

from nncompress import calibration, lowrank
from nncompress.pruning import magnitude_mask, nm_mask, sparsegpt_prune, wanda_mask
from nncompress.quantization import fake_quantize, group_qparams, gptq_quantize, rtn_quantize


def correlated_inputs(rows=512, features=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features ** 0.5
    scales = torch.logspace(0, 1.5, features)  # a few features much larger, as in real activations
    return (torch.randn(rows, features, generator=g) @ mixing) * scales


def weight_and_gram(out=12, features=64, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    x = correlated_inputs(features=features, seed=seed)
    return torch.randn(out, features, generator=g), x.double().T @ x.double(), x


def output_error(w, q, x):
    return float(((w.double() - q.double()) @ x.double().T).norm())


def damped_inverse(gram, damp=0.01):
    h = gram.clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    return torch.linalg.inv(h)


def reference_obs(weight, gram, fix_column, damp=0.01):
    """Columns in order: fix column j (round or prune it), move its error onto the later columns
    with the inverse Hessian, then eliminate j from the inverse Hessian (the papers' equations)."""
    w, hinv = weight.double().clone(), damped_inverse(gram, damp)
    for j in range(w.shape[1]):
        fixed = fix_column(w, j)
        error = (w[:, j] - fixed) / hinv[j, j]
        w[:, j:] -= error[:, None] * hinv[j, j:][None, :]
        w[:, j] = fixed
        hinv = hinv - hinv[:, j:j + 1] @ hinv[j:j + 1, :] / hinv[j, j]
    return w.float()


# --- calibration statistics -------------------------------------------------------------------

def test_input_statistics_stop_a_pass_once_the_chosen_layers_have_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    ran = []
    model[2].register_forward_hook(lambda *a: ran.append(1))
    x = torch.randn(30, 6)
    stats = calibration.input_statistics(model, [x[:10], x[10:20], x[20:]], ["0"])
    assert torch.allclose(stats["0"].gram, x.double().T @ x.double()) and stats["0"].rows == 30
    assert len(ran) == 1  # only the first pass ran to the end

    class Twice(nn.Module):  # one layer called twice per pass: every pass must run in full
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(self.a(x)))

    twice = Twice()
    x = torch.randn(20, 4)
    stats = calibration.input_statistics(twice, [x[:10], x[10:]], ["a"])
    with torch.no_grad():
        inputs = torch.cat([x, twice.a(x)])
    assert torch.allclose(stats["a"].gram, inputs.double().T @ inputs.double(), rtol=1e-5) and stats["a"].rows == 40


def test_input_statistics_sum_over_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(40, 6)
    stats = calibration.input_statistics(model, [x[:15], x[15:]])
    hidden = torch.relu(model[0](x)).detach()
    assert torch.allclose(stats["0"].gram, x.double().T @ x.double())
    assert torch.allclose(stats["2"].gram, hidden.double().T @ hidden.double())
    assert torch.equal(stats["2"].absmax, hidden.abs().amax(0)) and stats["0"].rows == 40
    assert torch.allclose(stats["0"].norms, x.norm(dim=0))
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="batches"):
        calibration.input_statistics(model, [])


def test_inverse_hessian_factor_is_the_cholesky_factor_of_the_damped_inverse():
    _, gram, _ = weight_and_gram()
    gram[5, :] = gram[:, 5] = 0  # a feature the data never excites
    u, dead = calibration.inverse_hessian_factor(gram, damp=0.01)
    h = gram.clone()
    h[5, 5] = 1
    h.diagonal().add_(0.01 * h.diagonal().mean())
    assert dead.nonzero().flatten().tolist() == [5]
    assert torch.allclose(u.T @ u, torch.linalg.inv(h), rtol=1e-8, atol=1e-12)
    assert torch.equal(u, u.triu())
    with pytest.raises(ValueError, match="damp"):
        calibration.inverse_hessian_factor(gram, damp=0)


# --- GPTQ --------------------------------------------------------------------------------------

@pytest.mark.parametrize("group_size", [None, 16])
def test_gptq_equals_the_papers_column_by_column_updates(group_size):
    weight, gram, _ = weight_and_gram()
    columns = weight.shape[1]
    group = columns if group_size is None else group_size
    grid = {}

    def round_column(w, j):
        if j % group == 0:
            grid["scale"], grid["zero"] = group_qparams(w[:, j:j + group].float(), 4)
        return fake_quantize(w[:, j].float(), grid["scale"], grid["zero"], 4, axis=0).double()

    expected = reference_obs(weight, gram, round_column)
    for block_size in (1, 7, 128):
        got = gptq_quantize(weight, gram, bits=4, group_size=group_size, block_size=block_size)
        assert torch.allclose(got, expected, atol=1e-5), block_size


def test_gptq_without_correlations_is_round_to_nearest():
    weight, _, _ = weight_and_gram()
    gram = torch.diag(torch.rand(64, dtype=torch.float64) + 0.5)  # independent inputs: nothing to compensate
    for group_size in (None, 16):
        assert torch.allclose(gptq_quantize(weight, gram, 3, group_size), rtn_quantize(weight, 3, group_size))


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_lowers_the_output_error_on_calibration_data(bits):
    weight, gram, x = weight_and_gram()
    rtn, gptq = rtn_quantize(weight, bits, 16), gptq_quantize(weight, gram, bits, 16)
    assert output_error(weight, gptq, x) < 0.95 * output_error(weight, rtn, x)
    for q in (rtn, gptq):  # both on a grid of 2**bits levels per row and group
        levels = [len(q[r, c:c + 16].unique()) for r in range(12) for c in range(0, 64, 16)]
        assert max(levels) <= 2 ** bits


def test_rtn_and_gptq_reject_bad_arguments():
    weight, gram, _ = weight_and_gram()
    with pytest.raises(ValueError, match="group_size must divide"):
        rtn_quantize(weight, 4, group_size=10)
    with pytest.raises(ValueError, match="gram must be"):
        gptq_quantize(weight, gram[:10, :10], 4)
    with pytest.raises(ValueError, match="bits"):
        rtn_quantize(weight, 0)
    with pytest.raises(TypeError):
        gptq_quantize(weight.long(), gram)


# --- Wanda -------------------------------------------------------------------------------------

def test_wanda_with_equal_norms_is_per_row_magnitude():
    weight, _, _ = weight_and_gram()
    keep = wanda_mask(weight, torch.ones(64), 0.5)
    assert (keep.sum(1) == 32).all()
    for row in range(12):
        assert torch.equal(keep[row], magnitude_mask(weight[row], 0.5).bool())


def test_wanda_mask_is_invariant_to_rescaling_a_feature_and_its_weights():
    weight, gram, x = weight_and_gram()
    norms = x.norm(dim=0)
    c = torch.ones(64)
    c[:8] = 10.0  # features 0-7 ten times larger, their weights ten times smaller: the same layer
    assert torch.equal(wanda_mask(weight, norms, 0.6), wanda_mask(weight / c, norms * c, 0.6))
    assert not torch.equal(magnitude_mask(weight, 0.6), magnitude_mask(weight / c, 0.6))


def test_nm_masks_keep_exactly_m_minus_n_of_every_m():
    weight, gram, x = weight_and_gram()
    for keep in (wanda_mask(weight, x.norm(dim=0), n=2, m=4), sparsegpt_prune(weight, gram, n=2, m=4)[1],
                 nm_mask(weight.abs(), 1, 4)):
        groups = keep.reshape(12, -1, 4).sum(2)
        assert (groups == groups[0, 0]).all() and groups[0, 0] in (2, 3)
    with pytest.raises(ValueError, match="both n and m"):
        wanda_mask(weight, x.norm(dim=0), n=2)
    with pytest.raises(ValueError, match="m must divide"):
        wanda_mask(weight, x.norm(dim=0), n=2, m=5)
    with pytest.raises(ValueError, match="norms"):
        wanda_mask(weight, torch.ones(10), 0.5)


# --- SparseGPT ---------------------------------------------------------------------------------

def test_sparsegpt_update_equals_the_papers_column_by_column_updates():
    weight, gram, _ = weight_and_gram()
    _, mask = sparsegpt_prune(weight, gram, 0.5, block_size=16)
    expected = reference_obs(weight, gram, lambda w, j: torch.where(mask[:, j], w[:, j], torch.zeros_like(w[:, j])))
    for block_size in (1, 16, 128):
        got, keep = sparsegpt_prune(weight, gram, block_size=block_size, mask=mask)
        assert torch.equal(keep, mask) and torch.allclose(got, expected, atol=1e-5)
        assert (got[~mask] == 0).all()


def test_sparsegpt_without_correlations_prunes_by_magnitude_without_updates():
    weight, _, _ = weight_and_gram()
    gram = torch.eye(64, dtype=torch.float64)
    pruned, keep = sparsegpt_prune(weight, gram, 0.5, block_size=64)
    assert torch.equal(keep, magnitude_mask(weight, 0.5).bool())
    assert torch.equal(pruned, weight * keep)


def test_sparsegpt_beats_the_same_sparsity_without_updates_on_calibration_data():
    weight, gram, x = weight_and_gram()
    pruned, keep = sparsegpt_prune(weight, gram, 0.5)
    assert abs(keep.float().mean().item() - 0.5) < 1e-6
    wanda = weight * wanda_mask(weight, x.norm(dim=0), 0.5)
    assert output_error(weight, pruned, x) < 0.9 * output_error(weight, weight * keep, x)
    assert output_error(weight, pruned, x) < output_error(weight, wanda, x)
    with pytest.raises(ValueError, match="block_size must be a multiple"):
        sparsegpt_prune(weight, gram, n=2, m=4, block_size=6)


# --- data-aware low rank (DRONE) ---------------------------------------------------------------

def test_data_aware_low_rank_reaches_the_eckart_young_bound_of_w_x():
    weight, _, x = weight_and_gram()
    a, b = lowrank.svd._data_aware_factors(weight, x.double().T @ x.double(), 4, 0.0)
    s = torch.linalg.svdvals(weight.double() @ x.double().T)
    best = float(s[4:].square().sum().sqrt())  # no rank-4 matrix does better on W X^T
    assert output_error(weight, a @ b, x) == pytest.approx(best, rel=1e-6)
    svd = lowrank.svd_factors(weight, 4)
    assert output_error(weight, svd[0] @ svd[1], x) > 1.1 * best


# --- whole models ------------------------------------------------------------------------------

def mlp_and_batches(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    x = correlated_inputs(256, 32, seed)
    return model, [x[:128], x[128:]], x


def test_prune_oneshot_reaches_the_sparsity_with_every_method():
    from nncompress.pruning import layer_sparsity, prune_oneshot

    model, batches, x = mlp_and_batches()
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = prune_oneshot(model, batches, method, 0.5)
        assert all(abs(s - 0.5) < 1e-6 for s in layer_sparsity(pruned).values())
        with torch.no_grad():
            errors[method] = float((pruned(x) - model(x)).norm())
    assert errors["sparsegpt"] < errors["magnitude"]
    two_four = prune_oneshot(model, batches, "wanda", n=2, m=4)
    assert (two_four[0].weight.detach().reshape(48, -1, 4).ne(0).sum(2) <= 2).all()
    with pytest.raises(ValueError, match="method"):
        prune_oneshot(model, batches, "random")


def test_magnitude_oneshot_runs_no_calibration_pass_and_prunes_each_row():
    from nncompress.pruning import prune_oneshot

    model, _, x = mlp_and_batches(2)
    pruned = prune_oneshot(model, [], "magnitude", 0.5)  # no batches: none are needed
    for i in (0, 2):
        expected = torch.stack([magnitude_mask(row, 0.5) for row in model[i].weight.detach()])
        assert torch.equal(pruned[i].weight.detach().ne(0), expected.bool())


def test_sequential_groups_see_the_inputs_of_the_compressed_model():
    from nncompress.pruning import prune_oneshot

    model, batches, x = mlp_and_batches(1)
    sequential = prune_oneshot(model, batches, "sparsegpt", 0.5, groups=[["0"], ["2"]])
    first, _ = sparsegpt_prune(model[0].weight, calibration.input_statistics(model, batches)["0"].gram, 0.5)
    by_hand = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    by_hand.load_state_dict(model.state_dict())
    with torch.no_grad():
        by_hand[0].weight.copy_(first)
    second, _ = sparsegpt_prune(model[2].weight, calibration.input_statistics(by_hand, batches)["2"].gram, 0.5)
    assert torch.allclose(sequential[2].weight, second, atol=1e-6)
    with pytest.raises(ValueError, match="exactly once"):
        calibration.layerwise_(model, batches, None, lambda *a: None, groups=[["0"]])


class Counted(nn.Module):
    """A residual block of two Linear layers that counts its forward passes."""

    def __init__(self, width, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc, self.proj, self.calls = nn.Linear(width, 2 * width), nn.Linear(2 * width, width), 0

    def forward(self, x):
        self.calls += 1
        return x + self.proj(torch.relu(self.fc(x)))


def blocks_and_groups(count=4, width=16):
    model = nn.Sequential(*(Counted(width, seed) for seed in range(count)))
    groups = [[f"{i}.fc", f"{i}.proj"] for i in range(count)]
    batches = list(torch.randn(6, 5, width, generator=torch.Generator().manual_seed(0)).split(2))
    return model, groups, batches


def gathered(model, batches, groups, monkeypatch=None):
    """The statistics each layer is transformed with (each layer halved), and the blocks' call counts."""
    seen = {}

    def transform(name, layer, stats):
        seen[name] = stats.gram.clone()
        with torch.no_grad():
            layer.weight.mul_(0.5)
    if monkeypatch is not None:
        monkeypatch.setattr(calibration._Replay, "plan", classmethod(lambda cls, *a: None))
    calibration.layerwise_(model, batches, None, transform, groups=groups)
    return seen, [block.calls for block in model]


def test_layerwise_skips_finished_blocks_with_the_statistics_of_full_passes(monkeypatch):
    model, groups, batches = blocks_and_groups()
    replayed, calls = gathered(model, batches, groups)
    model, groups, batches = blocks_and_groups()
    full, full_calls = gathered(model, batches, groups, monkeypatch)
    assert replayed.keys() == full.keys() and all(torch.equal(replayed[n], full[n]) for n in full)
    # full passes run block 0 in every pass (4 groups x 3 batches, plus one first pass that runs
    # all of it); with the replay it runs in the check, in pass 0 and in pass 1, where it is recorded
    assert full_calls[0] == 12 and calls[0] == 1 + 3 + 3
    assert sum(calls) < sum(full_calls)


def test_layerwise_runs_full_passes_when_the_blocks_are_not_in_group_order(monkeypatch):
    model, groups, batches = blocks_and_groups()
    assert calibration._Replay.plan(model, batches, groups) is not None
    assert calibration._Replay.plan(model, batches, groups[::-1]) is None  # the groups against the data flow
    assert calibration._Replay.plan(model, batches, [groups[0] + groups[1], *groups[2:]]) is None  # one block: the root
    shared = nn.Sequential(model[0], model[1], model[0])  # block 0 runs twice per pass
    assert calibration._Replay.plan(shared, batches, [["0.fc", "0.proj"], ["1.fc", "1.proj"]]) is None
    reversed_replay, _ = gathered(model, batches, groups[::-1])
    model, groups, batches = blocks_and_groups()
    reversed_full, _ = gathered(model, batches, groups[::-1], monkeypatch)
    assert all(torch.equal(reversed_replay[n], reversed_full[n]) for n in reversed_full)


def test_quantize_weights_applies_rtn_or_gptq_to_each_layer():
    from nncompress.quantization import quantize_weights

    model, batches, x = mlp_and_batches(2)
    rtn = quantize_weights(model, None, 4, 16, "rtn")
    assert torch.equal(rtn[0].weight, rtn_quantize(model[0].weight, 4, 16))
    gptq = quantize_weights(model, batches, 4, 16, "gptq")
    stats = calibration.input_statistics(model, batches)
    assert torch.allclose(gptq[2].weight, gptq_quantize(model[2].weight, stats["2"].gram, 4, 16), atol=1e-6)
    with torch.no_grad():
        assert float((gptq(x) - model(x)).norm()) < float((rtn(x) - model(x)).norm())


# --- the stored form of weight-only quantization ----------------------------------------------

@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("bits, group_size, symmetric", [(4, 16, False), (3, None, False), (8, 32, True)])
def test_weight_only_state_stores_the_weights_exactly(method, bits, group_size, symmetric):
    from nncompress.quantization import quantize_weights, weight_only_bytes, weight_only_state, weight_only_weights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    batches = [correlated_inputs(rows=128, seed=s) for s in range(2)]
    q = quantize_weights(model, batches, bits, group_size, method, symmetric, layers=["0"])
    state = weight_only_state(q)
    assert "0.weight" not in state and torch.equal(state["2.weight"], model[2].weight)  # layer 2 left in float
    assert state["0.codes"].dtype == torch.uint8 and state["0.codes"].numel() == (64 * 32 * bits + 7) // 8
    assert state["0.scale"].shape == (32, 64 // (group_size or 64))
    assert torch.equal(weight_only_weights(state)["0.weight"], q[0].weight)  # bit-exact round trip
    assert weight_only_bytes(q) < 0.2 * sum(p.numel() for p in model.parameters()) * 4 + 8000


def test_rtn_quantizes_an_embedding_table_row_by_row():
    from nncompress.quantization import quantize_weights, weight_only_state, weight_only_weights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 12), nn.Linear(12, 3))
    q = quantize_weights(model, None, 4, None, "rtn", layers=["0"])
    assert all(len(row.unique()) <= 16 for row in q[0].weight)  # one 4-bit grid per token
    assert torch.equal(q[0].weight, rtn_quantize(model[0].weight, 4))
    assert torch.equal(weight_only_weights(weight_only_state(q))["0.weight"], q[0].weight)
    assert torch.equal(quantize_weights(model, None, 4, None, "rtn")[0].weight, model[0].weight)  # Linear only by default
    with pytest.raises(TypeError):  # GPTQ needs a Linear layer's inputs
        from nncompress.quantization import quantize_weights as qw
        qw(model, [torch.zeros(2, 5, dtype=torch.long)], 4, None, "gptq", layers=["0"])


def test_weight_only_state_rejects_what_it_cannot_store():
    from nncompress.quantization import weight_only_state, weight_only_weights
    with pytest.raises(ValueError, match="quantize_weights first"):
        weight_only_state(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no weight-only"):
        weight_only_weights({"weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="lacks"):
        weight_only_weights({"0.codes": torch.zeros(2, dtype=torch.uint8)})


def test_one_thread_restores_the_thread_count_even_after_an_error():
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with calibration.one_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == threads
