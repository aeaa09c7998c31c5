"""One layer in every form: the variants compute what they should, and the grid times them all."""

import pytest
import torch
from torch import nn

from nncompress import practice, pruning


def layer(m=48, n=64, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n, m)


def inputs(n=32, features=64, seed=1):
    return torch.randn(n, features, generator=torch.Generator().manual_seed(seed))


def weight_of(module, n=64):
    """The matrix an affine ``module`` applies, read from its outputs: ``f(I) - f(0)``, transposed."""
    with torch.no_grad():
        return (module(torch.eye(n)) - module(torch.zeros(1, n))).T


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_variants_compute_the_forms_they_name(sparsity):
    fc = layer()
    x = inputs()
    before = {k: t.clone() for k, t in fc.state_dict().items()}
    v = practice.layer_variants(fc, sparsity, inputs=x)
    assert list(v) == list(practice.VARIANTS)
    assert all(torch.equal(t, before[k]) for k, t in fc.state_dict().items())  # the layer is left untouched
    assert type(fc) is nn.Linear and not hasattr(fc, "parametrizations")
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
        # low rank within the budget, and the best approximation of its rank (Eckart-Young)
        approx = weight_of(v["lowrank"])
        rank = int(torch.linalg.matrix_rank(approx))
        assert rank * (48 + 64) <= (1 - sparsity) * 48 * 64 < (rank + 1) * (48 + 64)
        sigma = torch.linalg.svdvals(fc.weight.detach())
        assert torch.linalg.norm(fc.weight - approx) == pytest.approx(sigma[rank:].norm().item(), rel=1e-4)
        assert (v["int8"](x) - dense).abs().max() < 0.05 * dense.abs().max(), "int8"


def test_variants_can_be_chosen_and_bad_input_is_rejected():
    fc = layer()
    assert set(practice.layer_variants(fc, 0.5, which=["csr", "lowrank"])) == {"csr", "lowrank"}
    with pytest.raises(ValueError, match="calibration"):
        practice.layer_variants(fc, 0.5, which=["int8"])
    with pytest.raises(ValueError, match=r"sparsity must be a finite number in \[0.0, 1.0\)"):
        practice.layer_variants(fc, 1.0)
    with pytest.raises(TypeError, match="sparsity"):
        practice.layer_variants(fc, "0.5")
    with pytest.raises(ValueError, match="unknown: \\['fp16'\\]"):
        practice.layer_variants(fc, 0.5, which=["fp16"])
    with pytest.raises(TypeError, match="nn.Linear"):
        practice.layer_variants(nn.Conv2d(1, 1, 3), 0.5)


def test_latency_grid_times_every_combination():
    v = practice.layer_variants(layer(), 0.5, which=["dense", "channels"])
    rows = practice.latency_grid(v, 64, batch_sizes=(1, 4), threads=(1,), min_run_time=0.01)
    assert {(r["variant"], r["batch"], r["threads"]) for r in rows} == {
        (n, b, 1) for n in ("dense", "channels") for b in (1, 4)}
    assert all(r["seconds"] > 0 for r in rows)  # no bound: timings depend on the machine
    with pytest.raises(ValueError, match="in_features"):
        practice.latency_grid(v, 0)
    with pytest.raises(ValueError, match="batch_sizes"):
        practice.latency_grid(v, 64, batch_sizes=(0,))
    with pytest.raises(TypeError, match="threads"):
        practice.latency_grid(v, 64, threads=(1.5,))
