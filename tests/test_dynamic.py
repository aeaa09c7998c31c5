"""Early-exit networks: the exit rule, dynamic execution, costs, and the threshold sweep."""

import pytest
import torch
from torch import nn

from nncompress import dynamic as D
from nncompress import measure
from nncompress.train import Recipe, fit

from conftest import blobs as _blobs


def blobs(n=200, seed=0):
    return _blobs(n, seed)


def small_net(seed=0):
    torch.manual_seed(seed)
    return D.early_exit_lenet(channels=(4, 8), hidden=32)


def test_forward_returns_every_exit_and_the_loss_sums_them():
    model = small_net()
    x, y = blobs(16)
    outputs = model(x)
    assert len(outputs) == model.num_exits == 3 and all(o.shape == (16, 10) for o in outputs)
    expected = sum(nn.functional.cross_entropy(o, y) for o in outputs)
    assert torch.allclose(D.exit_loss()(model, x, y), expected)
    weighted = D.exit_loss([0.0, 0.0, 1.0])(model, x, y)
    assert torch.allclose(weighted, nn.functional.cross_entropy(outputs[-1], y))


def test_exit_rule_on_hand_made_logits():
    confident, unsure = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.1, 0.0]])
    logits = [torch.cat([unsure, confident, unsure]), torch.cat([confident, unsure, unsure]),
              torch.tensor([[0.0, 1.0]] * 3)]
    pred, chosen = D.choose_exits(logits, 0.9)
    assert chosen.tolist() == [1, 0, 2] and pred.tolist() == [0, 0, 1]
    assert D.choose_exits(logits, 0.0)[1].tolist() == [0, 0, 0]
    assert D.choose_exits(logits, 1.0)[1].tolist() == [2, 2, 2]


def test_dynamic_execution_agrees_with_the_rule_and_skips_work():
    model = small_net()
    x, y = blobs(300)
    fit(model, x, y, Recipe(epochs=2, lr=3e-3, optimizer="adam"), loss_fn=D.exit_loss(), seed=0)
    with torch.no_grad():
        logits = model(x)
        middle = D.confidence(logits[0]).median().item()  # about half the inputs leave at exit 1
        for threshold in (0.0, middle, 0.9, 1.0):
            pred, chosen = D.choose_exits(logits, threshold)
            dynamic = D.DynamicExit(model, threshold)
            out = dynamic(x)
            assert torch.equal(out.argmax(1), pred) and torch.equal(dynamic.last_exits, chosen)
            for k in range(3):  # each input's logits are those of its exit
                rows = chosen == k
                assert torch.allclose(out[rows], logits[k][rows], atol=1e-5)
    assert 0 < (D.choose_exits(logits, middle)[1] == 0).sum() < len(x)  # the mixed case is exercised


def test_exit_costs_grow_and_match_the_harness():
    model = small_net()
    costs = D.exit_costs(model)
    assert costs[0] < costs[1] < costs[2]
    # the last path runs every block and every head: the whole network's FLOPs
    whole = measure.count_flops(model)
    assert costs[-1] == whole
    # by hand: conv1 (4 maps of 24x24, 25 taps) and head 1 (4*36 -> 10), 2 FLOPs per multiply-add
    assert costs[0] == 2 * (4 * 24 * 24 * 25 + 4 * 36 * 10)


def test_threshold_sweep_agrees_with_dynamic_execution():
    model = small_net()
    x, y = blobs(300)
    fit(model, x, y, Recipe(epochs=2, lr=3e-3, optimizer="adam"), loss_fn=D.exit_loss(), seed=0)
    costs = D.exit_costs(model)
    thresholds = [0.0, 0.5, 0.9, 0.99, 1.0]
    rows = D.threshold_sweep(model, x, y, thresholds)
    assert rows[0]["fractions"] == [1.0, 0.0, 0.0] and rows[0]["flops"] == pytest.approx(costs[0])
    assert rows[-1]["fractions"] == [0.0, 0.0, 1.0] and rows[-1]["flops"] == pytest.approx(costs[-1])
    with torch.no_grad():
        final = (model(x)[-1].argmax(1) == y).double().mean().item()
        assert rows[-1]["accuracy"] == pytest.approx(final)
        for t, row in zip(thresholds, rows):  # the sweep's figures are those of running the network dynamically
            dynamic = D.DynamicExit(model, t)
            correct = (dynamic(x).argmax(1) == y).double().mean().item()
            exits = dynamic.last_exits
            assert row["accuracy"] == pytest.approx(correct)
            assert row["fractions"] == pytest.approx([(exits == k).double().mean().item() for k in range(3)])
            assert row["flops"] == pytest.approx(torch.tensor(costs, dtype=torch.float64)[exits].mean().item())
    flops = [row["flops"] for row in rows]
    assert flops == sorted(flops)  # a higher threshold never lets an input leave earlier


@pytest.mark.parametrize("bad, error", [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                        ("0.5", TypeError), (True, TypeError)])
def test_bad_thresholds_are_rejected(bad, error):
    model = small_net()
    with pytest.raises(error, match=r"threshold must be a (finite )?number in \[0, 1\]"):
        D.DynamicExit(model, bad)
    with pytest.raises(error, match="threshold"):
        D.choose_exits([torch.zeros(1, 10)] * 2, bad)
    with pytest.raises(error, match=r"thresholds\[1\]"):
        D.threshold_sweep(model, *blobs(4), [0.5, bad])


def test_bad_construction_is_rejected():
    with pytest.raises(ValueError, match="same length"):
        D.EarlyExitNet([nn.Identity()], [nn.Identity(), nn.Identity()])
    with pytest.raises(TypeError, match="EarlyExitNet"):
        D.DynamicExit(nn.Linear(2, 2), 0.5)
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        D.exit_loss([-1.0, 1.0])
    with pytest.raises(TypeError, match=r"weights\[1\]"):
        D.exit_loss([1.0, "1"])
    with pytest.raises(ValueError, match="weights"):
        D.exit_loss([])
    with pytest.raises(ValueError, match="hidden"):
        D.early_exit_lenet(hidden=0)
    with pytest.raises(TypeError, match=r"channels\[1\]"):
        D.early_exit_lenet(channels=(4, 2.5))
    with pytest.raises(TypeError, match="EarlyExitNet"):
        D.exit_costs(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="2 weights for 3 exits"):
        D.exit_loss([1.0, 1.0])(small_net(), *blobs(4))
