"""One layer in every form: the variants compute what they should, and the grid times them all."""

import pytest
import torch
from torch import nn

from nncompress import measure, practice, pruning


def layer(m=48, n=64, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n, m)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_variants_compute_the_forms_they_name(sparsity):
    fc = layer()
    x = torch.randn(32, 64)
    v = practice.layer_variants(fc, sparsity, calibration=x)
    assert set(v) == set(practice.VARIANTS)
    with torch.no_grad():
        dense, masked = v["dense"](x), v["masked"](x)
        assert torch.equal(dense, fc(x))
        assert torch.allclose(v["zeros"](x), masked) and torch.allclose(v["csr"](x), masked, atol=1e-5)
        removed = pruning.layer_sparsity(v["zeros"])["fc"]
        assert removed == pytest.approx(sparsity, abs=1 / (48 * 64))
        # channel removal keeps the rows of largest norm, exactly
        small = v["channels"].fc
        assert small.out_features == round((1 - sparsity) * 48)
        rows = [int((fc.weight == w).all(1).nonzero()) for w in small.weight]
        norms = fc.weight.norm(dim=1)
        dropped = [r for r in range(48) if r not in rows]
        assert not dropped or norms[rows].min() >= norms[dropped].max()
        assert torch.allclose(v["channels"](x), dense[:, rows])
        # low rank within the budget, and exact at full rank
        low = v["lowrank"].fc
        assert low.rank * (48 + 64) <= (1 - sparsity) * 48 * 64
        assert (v["int8"](x) - dense).abs().max() < 0.05 * dense.abs().max()


def test_variants_can_be_chosen_and_bad_input_is_rejected():
    fc = layer()
    assert set(practice.layer_variants(fc, 0.5, which=["csr", "lowrank"])) == {"csr", "lowrank"}
    with pytest.raises(ValueError, match="calibration"):
        practice.layer_variants(fc, 0.5, which=["int8"])
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        practice.layer_variants(fc, 1.0)
    with pytest.raises(ValueError, match="unknown variants"):
        practice.layer_variants(fc, 0.5, which=["fp16"])
    with pytest.raises(TypeError, match="nn.Linear"):
        practice.layer_variants(nn.Conv2d(1, 1, 3), 0.5)


def test_latency_grid_times_every_combination():
    v = practice.layer_variants(layer(), 0.5, which=["dense", "channels"])
    rows = practice.latency_grid(v, 64, batch_sizes=(1, 4), threads=(1,), min_run_time=0.01)
    assert {(r["variant"], r["batch"], r["threads"]) for r in rows} == {
        (n, b, 1) for n in ("dense", "channels") for b in (1, 4)}
    assert all(0 < r["seconds"] < 1 for r in rows)
