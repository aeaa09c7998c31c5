"""Pruning against torch.nn.utils.prune, and the properties masks and removal must guarantee."""

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from nncompress import layers, measure, models, parametrizations, pruning
from nncompress.train import Recipe, fit

from conftest import blobs as _blobs
from transformer_block import block, tokens


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def blobs(n=256, seed=0):
    return _blobs(n, seed)

SHAPES = [(300, 784), (20, 1, 5, 5), (50, 20, 5, 5), (7,), (10, 100)]
SPARSITIES = [0.0, 0.1, 0.5, 0.77, 0.92, 0.999]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_magnitude_mask_equals_torch_l1_unstructured(shape, sparsity):
    weight = torch.randn(shape, generator=gen(hash(shape) % 1000))
    layer = nn.Module()
    layer.weight = nn.Parameter(weight.clone())
    torch_prune.l1_unstructured(layer, "weight", amount=sparsity)
    assert torch.equal(pruning.magnitude_mask(weight, sparsity), layer.weight_mask)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_masks_equal_torch_global_unstructured(sparsity):
    model = models.lenet5()
    weights = [m.weight.detach().clone() for m in (model.conv1, model.conv2, model.fc1, model.fc2)]
    reference = copy.deepcopy(model)
    params = [(getattr(reference, n), "weight") for n in ("conv1", "conv2", "fc1", "fc2")]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    ours = pruning.global_magnitude_masks(weights, sparsity)
    for mask, (module, _) in zip(ours, params):
        assert torch.equal(mask, module.weight_mask)


@pytest.mark.parametrize("shape", [(20, 1, 5, 5), (50, 20, 5, 5), (300, 784)])
@pytest.mark.parametrize("n", [1, 2, math.inf])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_ln_structured_mask_equals_torch_ln_structured(shape, n, dim, sparsity):
    weight = torch.randn(shape, generator=gen(7))
    layer = nn.Module()
    layer.weight = nn.Parameter(weight.clone())
    torch_prune.ln_structured(layer, "weight", amount=sparsity, n=n, dim=dim)
    assert torch.equal(pruning.ln_structured_mask(weight, sparsity, n=n, dim=dim), layer.weight_mask)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.95])
def test_sparsity_counts_are_exact(sparsity):
    model = pruning.prune_magnitude(models.lenet_300_100(), sparsity)
    for name, module in layers.select(model).items():
        assert int((module.weight == 0).sum()) == round(sparsity * module.weight.numel()), name
    per_layer = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}  # Han et al.'s LeNet-300-100 setting
    model = pruning.prune_magnitude(models.lenet_300_100(), per_layer)
    for name, s in pruning.layer_sparsity(model).items():
        weight = getattr(model, name).weight
        assert s == round(per_layer[name] * weight.numel()) / weight.numel()


def test_masked_weights_stay_zero_through_optimizer_steps():
    x, y = blobs()
    model = pruning.prune_magnitude(models.lenet5(), 0.8)
    pruning.prune_channels_(model, 0.5)
    masks = pruning.masks_of(model)
    # momentum and weight decay both try to move pruned weights; Adam even more so
    for recipe in (Recipe(epochs=1, lr=0.1, weight_decay=1e-2), Recipe(epochs=1, lr=0.01, optimizer="adam")):
        fit(model, x, y, recipe)
        for key, mask in masks.items():
            layer, _, tensor_name = key.rpartition(".")
            value = getattr(getattr(model, layer), tensor_name)
            assert torch.equal(value[mask == 0], torch.zeros_like(value[mask == 0])), key
            assert bool((value[mask == 1] != 0).all()), key  # the kept weights still train


def test_masks_only_ever_grow():
    model = pruning.prune_magnitude(models.lenet_300_100(), 0.5)
    first = pruning.masks_of(model)["fc1.weight"]
    pruning.prune_magnitude_(model, 0.3)  # a lower target cannot un-prune
    assert torch.equal(pruning.masks_of(model)["fc1.weight"], first)
    pruning.prune_magnitude_(model, 0.8)
    second = pruning.masks_of(model)["fc1.weight"]
    assert bool((second <= first).all()) and second.sum() == round(0.2 * second.numel())


def test_pruned_model_survives_deepcopy_and_state_dict_round_trip():
    model = pruning.prune_channels(pruning.prune_magnitude(models.lenet5(), 0.7), 0.5)
    x = torch.randn(4, 1, 28, 28, generator=gen())
    expected = model(x)
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), expected)
    assert pruning.masks_of(twin).keys() == pruning.masks_of(model).keys()
    restored = pruning.load_pruned(models.lenet5(), model.state_dict())
    assert torch.equal(restored(x), expected)
    for key, mask in pruning.masks_of(model).items():
        assert torch.equal(pruning.masks_of(restored)[key], mask)


def test_changing_a_deep_copy_leaves_the_original_intact():
    """torch shares a parametrized module's class between deep copies; editing a copy must not leak."""
    model = pruning.prune_magnitude(models.lenet5(), 0.5)
    x = torch.randn(2, 1, 28, 28, generator=gen())
    expected = model(x)
    parametrizations.bake_(copy.deepcopy(model))
    assert torch.equal(model(x), expected)
    pruning.prune_channels_(copy.deepcopy(model), 0.5)  # adds bias masks to the copy only
    assert torch.equal(model(x), expected) and "conv1.bias" not in pruning.masks_of(model)


def test_bake_gives_plain_weights_with_the_same_function():
    model = pruning.prune_magnitude(models.lenet_300_100(), 0.9)
    x = torch.randn(3, 1, 28, 28, generator=gen())
    expected = model(x)
    baked = parametrizations.bake(model, pruning.Mask)
    assert not pruning.masks_of(baked) and torch.equal(baked(x), expected)
    assert isinstance(baked.fc1.weight, nn.Parameter)
    assert set(baked.state_dict()) == set(models.lenet_300_100().state_dict())
    assert pruning.masks_of(model)  # the input keeps its masks


@pytest.mark.parametrize("build, sparsity", [(models.lenet5, 0.5), (models.lenet5, 0.8),
                                             (models.lenet_300_100, 0.6), (models.hinton_teacher, 0.9)])
def test_removed_channels_give_a_smaller_model_with_the_same_outputs(build, sparsity):
    torch.manual_seed(0)
    dense = build().eval()
    model = pruning.prune_channels(dense, sparsity)
    small = pruning.remove_channels(model)  # the couplings models.py declares
    x = torch.randn(16, 1, 28, 28, generator=gen(1))
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)
    assert type(small) is type(dense) and not parametrizations.find(small)
    assert measure.count_params(small) < measure.count_params(dense)
    for name, module in layers.select(small).items():
        assert type(module) in (nn.Linear, nn.Conv2d) and int(torch.count_nonzero(module.weight)) > 0, name
    keep = lambda s, c: c - round(s * c)  # noqa: E731
    if isinstance(model, models.LeNet5):
        assert (small.conv1.out_channels, small.conv2.out_channels, small.fc1.out_features) == \
            (keep(sparsity, 20), keep(sparsity, 50), keep(sparsity, 500))
        assert small.fc1.in_features == 16 * small.conv2.out_channels and small.fc2.out_features == 10
    else:
        hidden = [getattr(small, f"fc{i}").out_features for i in range(1, small.depth)]
        assert hidden == [keep(sparsity, h) for h in dense.hidden]


def test_remove_channels_also_removes_units_zeroed_without_masks():
    model = models.lenet_300_100().eval()
    with torch.no_grad():
        model.fc2.weight[:40] = 0
        model.fc2.bias[:40] = 0
    small = pruning.remove_channels(model)
    assert (small.fc1.out_features, small.fc2.out_features, small.fc3.in_features) == (300, 60, 60)
    x = torch.randn(5, 1, 28, 28, generator=gen())
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)
    assert model.fc2.out_features == 100  # the input is left unchanged


def test_a_unit_with_a_zero_weight_row_but_a_bias_is_alive():
    model = models.lenet_300_100().eval()
    with torch.no_grad():
        model.fc1.weight[:10] = 0  # outputs relu(bias): constant, not zero
    assert pruning.remove_channels(model).fc1.out_features == 300


def conv_chain():
    """A model the package knows nothing about: strided, padded convolutions, then a classifier."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=2, dilation=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)).eval()


CONV_CHAIN = [layers.Coupling("0", ("2",)), layers.Coupling("2", ("5",), repeat=16)]


def test_remove_channels_works_on_any_model_from_its_couplings():
    model = conv_chain()
    masked = pruning.prune_channels(model, {"0": 0.5, "2": 0.5})
    small = pruning.remove_channels(masked, CONV_CHAIN)
    assert (small[0].out_channels, small[2].in_channels, small[2].out_channels, small[5].in_features) == (4, 4, 3, 48)
    for a, b in ((small[0], model[0]), (small[2], model[2])):
        assert (a.kernel_size, a.stride, a.padding, a.dilation) == (b.kernel_size, b.stride, b.padding, b.dilation)
    x = torch.randn(4, 3, 8, 8, generator=gen(2))
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x), rtol=1e-5, atol=1e-6)
    assert pruning.masks_of(masked) and measure.count_params(masked) == measure.count_params(model)  # untouched


def test_remove_lowest_channels_removes_the_lowest_scores_of_each_producer():
    model = conv_chain()
    scores = {"0": torch.tensor([5.0, 1, 7, 0, 3, 9, 2, 8]), "2": torch.arange(6.0).flip(0)}
    small = pruning.remove_lowest_channels(model, CONV_CHAIN, scores, 0.5)
    assert (small[0].out_channels, small[2].in_channels, small[2].out_channels, small[5].in_features) == (4, 4, 3, 48)
    kept0, kept2 = torch.tensor([0, 2, 5, 7]), torch.tensor([0, 1, 2])  # the four and three highest scores
    torch.testing.assert_close(small[0].weight, model[0].weight[kept0])
    torch.testing.assert_close(small[2].weight, model[2].weight[kept2][:, kept0])
    # the same function as zeroing those channels in the original
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, kept in (("0", kept0), ("2", kept2)):
            dead = torch.ones(len(scores[name]), dtype=torch.bool)
            dead[kept] = False
            zeroed.get_submodule(name).weight[dead] = 0
            zeroed.get_submodule(name).bias[dead] = 0
        x = torch.randn(4, 3, 8, 8, generator=gen(3))
        torch.testing.assert_close(small(x), zeroed(x), rtol=1e-5, atol=1e-6)
    assert pruning.remove_lowest_channels(model, CONV_CHAIN, scores, 0.0)[0].out_channels == 8
    with pytest.raises(ValueError, match="no entry"):
        pruning.remove_lowest_channels(model, CONV_CHAIN, {"0": scores["0"]}, 0.5)
    with pytest.raises(ValueError, match="must hold 6"):
        pruning.remove_lowest_channels(model, CONV_CHAIN, dict(scores, **{"2": torch.ones(5)}), 0.5)
    with pytest.raises(ValueError, match="fraction"):
        pruning.remove_lowest_channels(model, CONV_CHAIN, scores, 1.0)


def test_remove_channels_keeps_one_channel_of_a_dead_layer():
    model = conv_chain()
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    small = pruning.remove_channels(model, CONV_CHAIN)
    assert small[2].out_channels == 1 and small[5].in_features == 16
    x = torch.randn(2, 3, 8, 8, generator=gen())
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


@pytest.mark.parametrize("couplings, error, match", [
    ([layers.Coupling("0", ("9",))], ValueError, "'9', which is not a layer"),
    ([layers.Coupling("0", ("5",))], ValueError, r"'0' has 8 output channels, so '5' should have 8 x repeat 1 = 8"),
    ([layers.Coupling("2", ("5",), repeat=4)], ValueError, "should have 6 x repeat 4 = 24 inputs; it has 96"),
    ([layers.Coupling("0", ("2",)), layers.Coupling("0", ("2",))], ValueError, "producer in more than one"),
    ([layers.Coupling("1", ("2",))], TypeError, "'1' is a ReLU"),
    (layers.Coupling("0", ("2",)), TypeError, "couplings must be a list"),
    ([("0", ("2",))], TypeError, "couplings must be a list of nncompress.layers.Coupling"),
    ([], ValueError, "at least one Coupling"),
])
def test_remove_channels_rejects_couplings_that_do_not_fit(couplings, error, match):
    with pytest.raises(error, match=match):
        pruning.remove_channels(conv_chain(), couplings)


def test_remove_channels_needs_couplings_for_a_model_without_declared_ones():
    with pytest.raises(TypeError, match="no couplings are declared for a Sequential"):
        pruning.remove_channels(conv_chain())
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match="grouped convolution"):
        pruning.remove_channels(grouped, [layers.Coupling("0", ("1",))])


def test_polynomial_schedule_follows_zhu_and_gupta():
    s = [pruning.polynomial_sparsity(t, 0.9, 10, 110) for t in range(0, 130)]
    assert s[0] == s[10] == 0.0 and s[110] == s[129] == pytest.approx(0.9)
    assert all(b >= a for a, b in zip(s, s[1:]))  # monotone
    # the cubic: at 50 % progress, 1 - 0.5**3 = 87.5 % of the final sparsity is reached
    assert s[60] == pytest.approx(0.9 * (1 - 0.5**3))
    assert pruning.polynomial_sparsity(60, 0.9, 10, 110, initial_sparsity=0.5) == pytest.approx(0.9 - 0.4 * 0.125)


def test_gradual_pruning_reaches_the_final_sparsity_during_training():
    x, y = blobs(512)
    model = models.lenet_300_100()
    seen = []
    callback = pruning.gradual_pruning(0.8, begin_step=2, end_step=12, frequency=2)
    fit(model, x, y, Recipe(epochs=2, lr=0.05, batch_size=32),
        on_step_end=lambda step, m: (callback(step, m), seen.append(pruning.layer_sparsity(m)["fc1"])))
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.8, abs=1e-4)
    assert all(b >= a for a, b in zip(seen, seen[1:]))


def test_iterative_prune_reaches_the_last_sparsity_and_retrains():
    x, y = blobs(512)
    torch.manual_seed(0)
    model = models.lenet_300_100()
    fit(model, x, y, Recipe(epochs=2, lr=0.05, batch_size=32))  # Han et al. prune a trained network
    rounds = []
    same = pruning.iterative_prune_(model, x, y, [0.5, 0.75, 0.9], Recipe(epochs=1, lr=0.05),
                                    on_round=lambda i, m: rounds.append(pruning.layer_sparsity(m)["fc2"]))
    assert same is model  # in place
    assert rounds == pytest.approx([0.5, 0.75, 0.9], abs=1e-4)
    assert ((model(x).argmax(1) == y).float().mean() > 0.9)


def test_lottery_ticket_keeps_initial_values_of_surviving_weights():
    x, y = blobs(256)
    torch.manual_seed(3)
    init = models.lenet_300_100().state_dict()
    ticket = pruning.lottery_ticket(models.lenet_300_100, x, y, Recipe(epochs=1, lr=0.05), sparsity=0.75,
                                    rounds=2, seed=3)
    mask = pruning.masks_of(ticket)["fc1.weight"]
    assert mask.mean().item() == pytest.approx(0.25, abs=1e-4)  # two rounds of 50 %
    assert torch.equal(ticket.fc1.weight, init["fc1.weight"] * mask)  # rewound to the initialization
    assert torch.equal(ticket.fc1.bias, init["fc1.bias"])
    early = pruning.lottery_ticket(models.lenet_300_100, x, y, Recipe(epochs=1, lr=0.05), sparsity=0.5,
                                   rewind_step=1, seed=3)
    kept = pruning.masks_of(early)["fc1.weight"] == 1
    assert not torch.equal(early.fc1.weight[kept], init["fc1.weight"][kept])  # rewound to step 1 instead
    with pytest.raises(ValueError, match="rewind_step"):
        pruning.lottery_ticket(models.lenet_300_100, x, y, Recipe(epochs=1, lr=0.05), 0.5, rewind_step=10_000)


def test_rewind_to_a_fresh_initialization_keeps_the_mask():
    ticket = pruning.prune_magnitude(models.lenet_300_100(), 0.9)
    fresh = models.lenet_300_100().state_dict()
    trained = ticket.fc1.weight.detach().clone()
    rewound = pruning.rewind(ticket, fresh)
    mask = pruning.masks_of(rewound)["fc1.weight"]
    assert torch.equal(rewound.fc1.weight, fresh["fc1.weight"] * mask)
    assert torch.equal(ticket.fc1.weight, trained)  # rewind returns a new model
    assert pruning.rewind_(ticket, fresh) is ticket and torch.equal(ticket.fc1.weight, rewound.fc1.weight)
    with pytest.raises(ValueError, match="'fc9.weight', which is not a tensor"):
        pruning.rewind_(ticket, {"fc9.weight": fresh["fc1.weight"]})
    with pytest.raises(ValueError, match=r"state\['fc1.bias'\] has shape \(3,\)"):
        pruning.rewind_(ticket, {"fc1.bias": torch.zeros(3)})


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_zero_one_is_rejected(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a finite number in \[0.0, 1.0\)"):
        pruning.magnitude_mask(torch.ones(4), bad)
    with pytest.raises(ValueError, match=r"sparsity must be a finite number in \[0.0, 1.0\)"):
        pruning.prune_channels(models.lenet5(), bad)
    with pytest.raises(ValueError, match=r"sparsity\['fc2'\] must be a finite number"):
        pruning.prune_magnitude(models.lenet5(), {"fc1": 0.5, "fc2": bad})


@pytest.mark.parametrize("bad", ["0.5", True, None])
def test_non_numeric_sparsity_is_a_type_error(bad):
    with pytest.raises(TypeError, match="sparsity must be a number"):
        pruning.magnitude_mask(torch.ones(4), bad)
    with pytest.raises(TypeError, match="sparsity must be a number"):
        pruning.prune_magnitude(models.lenet5(), bad, scope="global")


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (float("nan"), ValueError),
                                        ("fro", TypeError), ("nuc", TypeError), (None, TypeError)])
def test_unknown_norm_is_rejected(bad, error):
    with pytest.raises(error, match=r"n \(the order of the L_n norm\) must be a positive number or math.inf"):
        pruning.ln_structured_mask(torch.ones(4, 3), 0.5, n=bad)
    with pytest.raises(error, match="L_n norm"):
        pruning.prune_channels(models.lenet5(), 0.5, n=bad)


def test_unsupported_layers_and_names_are_rejected():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="'1' is a BatchNorm1d"):
        pruning.prune_magnitude(model, 0.5, layers=["1"])
    with pytest.raises(ValueError, match="no layer named 'fc9'"):
        pruning.prune_magnitude(models.lenet_300_100(), 0.5, layers=["fc9"])
    with pytest.raises(ValueError, match="pattern 'conv.*' matches no"):
        pruning.prune_magnitude(models.lenet_300_100(), {"conv*": 0.5})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        pruning.prune_magnitude("model", 0.5)
    with pytest.raises(ValueError, match="scope must be one of 'layer', 'global'"):
        pruning.prune_magnitude(models.lenet_300_100(), 0.5, scope="row")
    with pytest.raises(ValueError, match="scope must be 'layer' when sparsity is a per-layer mapping"):
        pruning.prune_magnitude(models.lenet_300_100(), {"fc1": 0.5}, scope="global")
    with pytest.raises(ValueError, match="either layers or a per-layer sparsity mapping"):
        pruning.prune_channels(models.lenet_300_100(), {"fc1": 0.5}, layers="fc1")
    with pytest.raises(ValueError, match=r"dim must be an int in \[-2, 1\]"):
        pruning.ln_structured_mask(torch.ones(4, 3), 0.5, dim=2)
    with pytest.raises(ValueError, match="weight must not be empty"):
        pruning.magnitude_mask(torch.ones(0), 0.5)


@pytest.mark.parametrize("masks, error, match", [
    ({"fc1.weight": torch.ones(3, 3)}, ValueError, r"masks\['fc1.weight'\] has shape \(3, 3\)"),
    ({"fc1.weight": torch.full((300, 784), 0.5)}, ValueError, "only 0 and 1"),
    ({"fc9.weight": torch.ones(1)}, ValueError, "'fc9.weight' names no layer"),
    ({"fc*.weight": torch.ones(1)}, ValueError, "names no layer"),
    ({"fc1.scale": torch.ones(1)}, ValueError, "names no weight or bias"),
    ({"dropout.weight": torch.ones(1)}, TypeError, "tensor of a Dropout"),
    ({"fc1.weight": [1.0]}, TypeError, r"masks\['fc1.weight'\] must be a torch.Tensor"),
    ([("fc1.weight", torch.ones(1))], TypeError, "masks must be a mapping"),
])
def test_apply_masks_rejects_masks_that_do_not_fit(masks, error, match):
    model = models.lenet_300_100()
    with pytest.raises(error, match=match):
        pruning.apply_masks(model, masks)
    assert not pruning.masks_of(model)


def test_new_model_functions_leave_their_input_untouched_and_in_place_ones_return_it():
    model = models.lenet5().eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 1, 28, 28, generator=gen())
    expected = model(x)
    mask = {"fc2.weight": torch.ones(10, 500).tril()}
    new = [pruning.prune_magnitude(model, 0.5), pruning.prune_channels(model, 0.5), pruning.apply_masks(model, mask),
           pruning.to_sparse(pruning.prune_magnitude(model, 0.5)), pruning.remove_channels(model)]
    assert all(m is not model for m in new) and all(pruning.masks_of(m) for m in new[:3])
    assert not pruning.masks_of(model) and torch.equal(model(x), expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert pruning.apply_masks_(model, mask) is model and pruning.masks_of(model).keys() == {"fc2.weight"}
    assert pruning.prune_magnitude_(model, 0.5) is model and pruning.prune_channels_(model, 0.5) is model


def test_sparsity_mappings_take_patterns_and_types_on_any_model():
    model = block()
    pruned = pruning.prune_magnitude(model, {"attn.*": 0.5, "attn.o": 0.9, "ffn.fc2": 0.25})
    exact = lambda s: round(s * 32 * 64) / (32 * 64) if s == 0.25 else round(s * 32 * 32) / (32 * 32)  # noqa: E731
    assert pruning.layer_sparsity(pruned) == {"attn.q": 0.5, "attn.k": 0.5, "attn.v": 0.5, "attn.o": exact(0.9),
                                              "ffn.fc1": 0.0, "ffn.fc2": 0.25}
    channels = pruning.prune_channels(model, {nn.Linear: 0.25})  # a mapping names every layer it prunes
    assert len(pruning.masks_of(channels)) == 12  # the last layer too: weight and bias of six layers
    default = pruning.prune_channels(model, 0.25)
    assert sorted(pruning.masks_of(default)) == sorted(f"{n}.{t}" for n in
                                                        ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.fc1")
                                                        for t in ("weight", "bias"))  # not the last layer
    restored = pruning.load_pruned(block(seed=3), pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(restored(tokens(2)), pruned(tokens(2)))


def test_a_bare_layer_is_pruned_as_its_own_only_layer():
    layer = nn.Linear(8, 4)
    pruned = pruning.prune_magnitude(layer, 0.5)
    assert list(pruning.masks_of(pruned)) == ["weight"] and pruning.layer_sparsity(pruned) == {"": 0.5}
    assert isinstance(pruning.to_sparse(pruned), pruning.SparseLinear)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_sparse_linear_matches_the_dense_layer(sparsity):
    model = pruning.prune_magnitude(models.lenet_300_100(), sparsity).eval()
    sparse = pruning.to_sparse(model).eval()
    x = torch.randn(7, 1, 28, 28, generator=gen())
    torch.testing.assert_close(sparse(x), model(x), rtol=1e-5, atol=1e-5)
    assert isinstance(sparse.fc1, pruning.SparseLinear)
    assert sparse.fc1.weight.values().numel() == int(torch.count_nonzero(model.fc1.weight))
    assert pruning.masks_of(model)  # the original keeps its masks
    assert measure.count_params(sparse) == 266_610
    assert measure.count_nonzeros(sparse) == measure.count_nonzeros(model)
    # a CSR product does 2 FLOPs per stored weight (per input); the dense model does 2 per weight
    weights = sum(int(torch.count_nonzero(getattr(model, f"fc{i}").weight)) for i in (1, 2, 3))
    assert measure.count_flops(sparse) == 2 * weights
    assert measure.count_flops(model) == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        pruning.SparseLinear.from_dense(nn.Conv2d(1, 1, 3))


def test_sparse_linear_stores_the_csr_arrays_and_nothing_more():
    layer = pruning.prune_magnitude(nn.Linear(256, 256, bias=False), 0.8).eval()
    sparse = pruning.to_sparse(layer)
    kept = int(torch.count_nonzero(layer.weight))
    # a 32-bit value and a 64-bit column index per kept weight, and 257 64-bit row offsets
    arrays = kept * (4 + 8) + 257 * 8
    assert arrays <= measure.serialized_bytes(sparse) < arrays + 4_000  # + torch.save's own headers
    assert measure.serialized_bytes(sparse) < 0.65 * measure.serialized_bytes(nn.Linear(256, 256, bias=False))


def test_sparse_linear_takes_a_transformers_token_batches():
    layer = pruning.prune_magnitude(nn.Linear(16, 8), 0.7).eval()
    sparse = pruning.to_sparse(layer)
    x = torch.randn(3, 5, 16, generator=gen())  # (batch, tokens, features)
    torch.testing.assert_close(sparse(x), layer(x), rtol=1e-5, atol=1e-5)
    assert measure.count_flops(sparse, inputs=x[:1]) == 2 * 5 * int(torch.count_nonzero(layer.weight))


# ---------------------------------------------------------------------------------------------
# experiments: sparsity_sweep and gradual_vs_one_shot


def small_trained_mlp(dropout=0.0):
    x, y = blobs(256)
    torch.manual_seed(0)
    model = models.MLP((32, 16), dropout=dropout)
    fit(model, x, y, Recipe(epochs=2, lr=0.05, batch_size=32))
    return model, x, y


def weight_sparsity(model):
    """Fraction of zeros among the prunable layers' weights together."""
    weights = [m.weight for m in layers.select(model).values()]
    return 1 - sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)


def train_loss(x, y):
    return lambda model: nn.functional.cross_entropy(model.eval()(x), y).item()


SWEEP_RECIPE = Recipe(epochs=1, lr=0.05, batch_size=32)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsity_sweep_reaches_each_sparsity_and_leaves_the_model_intact(scope):
    model, x, y = small_trained_mlp()
    before = copy.deepcopy(model.state_dict())
    sweep = [0.3, 0.6, 0.9]
    curves = pruning.sparsity_sweep(model, x, y, sweep, SWEEP_RECIPE, weight_sparsity, scope=scope)
    assert list(curves) == ["one-shot", "one-shot + retrain", "iterative"]
    for name, values in curves.items():
        assert values == pytest.approx(sweep, abs=1e-3), name  # retraining never revives a pruned weight
    assert not pruning.masks_of(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_sparsity_sweep_equals_the_explicit_prune_and_retrain_loop():
    model, x, y = small_trained_mlp(dropout=0.0)
    sweep, score = [0.5, 0.8, 0.95], train_loss(x, y)
    curves = pruning.sparsity_sweep(model, x, y, sweep, SWEEP_RECIPE, score, seed=4, scope="global",
                                    dropout={"dropout": 0.3})
    expected = {"one-shot": [], "one-shot + retrain": [], "iterative": []}
    chain = copy.deepcopy(model)
    for s in sweep:
        once = pruning.prune_magnitude(model, s, scope="global")
        expected["one-shot"].append(score(once))
        for m, key in ((once, "one-shot + retrain"), (pruning.prune_magnitude_(chain, s, scope="global"), "iterative")):
            m.dropout.p = 0.3
            fit(m, x, y, SWEEP_RECIPE, seed=4)
            m.dropout.p = 0.0
            expected[key].append(score(m))
    assert curves == expected
    assert model.dropout.p == 0.0
    # retraining repairs the deepest cut, and the iterated cut differs from the single one
    assert curves["one-shot + retrain"][-1] < curves["one-shot"][-1]
    assert curves["iterative"][-1] != curves["one-shot + retrain"][-1]


def test_sparsity_sweep_is_deterministic_for_a_seed():
    model, x, y = small_trained_mlp(dropout=0.0)
    run = lambda seed, dropout=None: pruning.sparsity_sweep(  # noqa: E731
        model, x, y, [0.5, 0.9], SWEEP_RECIPE, train_loss(x, y), seed=seed, dropout=dropout)
    first = run(1)
    assert run(1) == first
    assert run(2)["iterative"] != first["iterative"]  # the seed reaches the retraining
    assert run(1, {"dropout": 0.5})["one-shot + retrain"] != first["one-shot + retrain"]  # so does dropout
    assert run(1, {"dropout": 0.5})["one-shot"] == first["one-shot"]


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsities": []}, "non-empty, strictly increasing"),
    ({"sparsities": [0.5, 0.5]}, "strictly increasing"),
    ({"sparsities": [0.8, 0.5]}, "strictly increasing"),
    ({"sparsities": [0.5, 1.0]}, r"sparsities\[1\] must be a finite number in \[0.0, 1.0\)"),
    ({"sparsities": [-0.1]}, r"sparsities\[0\] must be a finite number in \[0.0, 1.0\)"),
    ({"dropout": {"fc1": 0.2}}, "dropout names 'fc1', which is not an nn.Dropout"),
    ({"dropout": {"nope": 0.2}}, "not an nn.Dropout"),
    ({"dropout": {"dropout": 1.0}}, r"dropout\['dropout'\] must be a finite number in \[0.0, 1.0\)"),
    ({"scope": "row"}, "scope must be one of"),
    ({"layers": ["fc9"]}, "no layer named 'fc9'"),
    ({"x": torch.zeros(0, 1, 28, 28)}, "x must not be empty"),
    ({"seed": -0.5}, None),
])
def test_sparsity_sweep_rejects_bad_input(kwargs, match):
    model = models.MLP((8,), dropout=0.1)
    x, y = blobs(16)
    args = {"x": x, "y": y, "sparsities": [0.5], "recipe": SWEEP_RECIPE, "score": weight_sparsity, **kwargs}
    with pytest.raises(ValueError if match else TypeError, match=match or "seed must be an int"):
        pruning.sparsity_sweep(model, **args)


@pytest.mark.parametrize("kwargs, match", [
    ({"dropout": {"dropout": "0.2"}}, r"dropout\['dropout'\] must be a number in \[0.0, 1.0\), got str"),
    ({"dropout": ["dropout"]}, "dropout must be a mapping"),
    ({"sparsities": [0.5, "0.9"]}, r"sparsities\[1\] must be a number"),
    ({"sparsities": "0.5"}, "sparsities must be a sequence"),
    ({"score": 0.5}, "score must be a callable"),
    ({"recipe": {"epochs": 1}}, "recipe must be an nncompress.train.Recipe"),
    ({"layers": 3}, "layers must be"),
])
def test_sparsity_sweep_rejects_arguments_of_the_wrong_kind(kwargs, match):
    model = models.MLP((8,), dropout=0.1)
    x, y = blobs(16)
    args = {"sparsities": [0.5], "recipe": SWEEP_RECIPE, "score": weight_sparsity, **kwargs}
    with pytest.raises(TypeError, match=match):
        pruning.sparsity_sweep(model, x, y, **args)


GRADUAL_RECIPE = Recipe(epochs=3, lr=0.05, batch_size=32)  # 8 steps per epoch on 256 examples


def test_gradual_vs_one_shot_reach_the_final_sparsity_with_a_monotone_trace():
    model, x, y = small_trained_mlp()
    before = copy.deepcopy(model.state_dict())
    out = pruning.gradual_vs_one_shot(model, x, y, 0.9, GRADUAL_RECIPE, weight_sparsity, end_step=16,
                                      frequency=2, scope="global", trace_every=2)
    assert set(out) == {"gradual", "one-shot", "trace"}
    assert out["gradual"] == pytest.approx(0.9, abs=1e-3) and out["one-shot"] == pytest.approx(0.9, abs=1e-3)
    steps, values = zip(*out["trace"])
    assert list(steps) == list(range(2, 25, 2))  # every second of the 24 training steps
    assert all(b >= a for a, b in zip(values, values[1:])) and values[0] > 0
    weights = sum(m.weight.numel() for m in layers.select(model).values())
    params = measure.count_params(model)
    assert values[-1] == pytest.approx(round(0.9 * weights) / params)  # biases are never pruned
    assert values[steps.index(16)] == values[-1] and values[steps.index(14)] < values[-1]  # done at end_step
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert pruning.gradual_vs_one_shot(model, x, y, 0.9, GRADUAL_RECIPE, weight_sparsity, end_step=16)["trace"] == []


def test_gradual_vs_one_shot_equals_the_explicit_procedures():
    model, x, y = small_trained_mlp()
    score = train_loss(x, y)
    out = pruning.gradual_vs_one_shot(model, x, y, 0.95, GRADUAL_RECIPE, score, end_step=12, frequency=3, seed=5)
    gradual = copy.deepcopy(model)
    fit(gradual, x, y, GRADUAL_RECIPE, seed=5, on_step_end=pruning.gradual_pruning(0.95, 0, 12, frequency=3))
    oneshot = pruning.prune_magnitude(model, 0.95)
    fit(oneshot, x, y, GRADUAL_RECIPE, seed=5)
    assert out["gradual"] == score(gradual) and out["one-shot"] == score(oneshot)
    assert out["gradual"] != out["one-shot"]
    again = pruning.gradual_vs_one_shot(model, x, y, 0.95, GRADUAL_RECIPE, score, end_step=12, frequency=3, seed=5)
    other = pruning.gradual_vs_one_shot(model, x, y, 0.95, GRADUAL_RECIPE, score, end_step=12, frequency=3, seed=6)
    assert again == out and other["gradual"] != out["gradual"]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"end_step": 25}, ValueError, r"end_step must be an int in \[1, 24\]"),
    ({"end_step": 8.0}, TypeError, "end_step must be an int"),
    ({"end_step": 8, "begin_step": 8}, ValueError, "begin_step < end_step"),
    ({"final_sparsity": 1.0}, ValueError, r"final_sparsity must be a finite number in \[0.0, 1.0\)"),
    ({"final_sparsity": "0.9"}, TypeError, "final_sparsity must be a number"),
    ({"frequency": 0}, ValueError, "frequency must be an int >= 1"),
    ({"trace_every": -1}, ValueError, "trace_every must be an int >= 0"),
    ({"scope": "row"}, ValueError, "scope must be one of"),
    ({"score": None}, TypeError, "score must be a callable"),
])
def test_gradual_vs_one_shot_rejects_bad_input(kwargs, error, match):
    model = models.MLP((8,))
    x, y = blobs(256)
    args = {"final_sparsity": 0.5, "recipe": GRADUAL_RECIPE, "score": weight_sparsity, "end_step": 8, **kwargs}
    with pytest.raises(error, match=match):
        pruning.gradual_vs_one_shot(model, x, y, **args)


@pytest.mark.parametrize("call, error, match", [
    (lambda x, y: pruning.iterative_prune_(models.MLP((8,)), x, y, [], SWEEP_RECIPE), ValueError,
     "schedule must be a non-empty list"),
    (lambda x, y: pruning.iterative_prune_(models.MLP((8,)), x, y, 0.5, SWEEP_RECIPE), TypeError,
     "schedule must be a list of sparsities"),
    (lambda x, y: pruning.iterative_prune_(models.MLP((8,)), x, y, [0.5], SWEEP_RECIPE, on_round=1), TypeError,
     "on_round must be a callable"),
    (lambda x, y: pruning.iterative_prune_(models.MLP((8,)), x, y[:5], [0.5], SWEEP_RECIPE), ValueError,
     "same number of examples"),
    (lambda x, y: pruning.lottery_ticket(models.lenet_300_100, x, y, SWEEP_RECIPE, 0.5, rounds=0), ValueError,
     "rounds must be an int >= 1"),
    (lambda x, y: pruning.lottery_ticket(models.lenet_300_100, x, y, SWEEP_RECIPE, 0.5, rewind_step=-1), ValueError,
     "rewind_step must be an int >= 0"),
    (lambda x, y: pruning.lottery_ticket(None, x, y, SWEEP_RECIPE, 0.5), TypeError, "make_model must be a callable"),
    (lambda x, y: pruning.gradual_pruning(0.5, 0, 10, frequency=1.5), TypeError, "frequency must be an int"),
    (lambda x, y: pruning.polynomial_sparsity(0, 0.5, 0, 10, power=0), ValueError, "power must be a finite number > 0"),
    (lambda x, y: pruning.global_magnitude_masks([], 0.5), ValueError, "weights must hold at least one tensor"),
    (lambda x, y: pruning.SparseLinear(torch.ones(3), None), ValueError, "weight must be 2-d"),
])
def test_procedures_reject_bad_input(call, error, match):
    x, y = blobs(16)
    with pytest.raises(error, match=match):
        call(x, y)


def test_a_layer_selection_given_as_an_iterator_serves_every_round():
    x, y = blobs(64)
    model = models.MLP((16,))
    pruning.iterative_prune_(model, x, y, [0.3, 0.6], SWEEP_RECIPE, layers=(n for n in ["fc1"]))
    assert pruning.layer_sparsity(model) == pytest.approx({"fc1": round(0.6 * 784 * 16) / (784 * 16), "fc2": 0.0})
