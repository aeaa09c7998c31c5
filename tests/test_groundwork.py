"""The shared groundwork: layer selection, parametrizations, argument validation."""

import copy
import math

import pytest
import torch
from torch import nn

from nncompress import layers, parametrizations, validate

from transformer_block import block, tokens


class Double(nn.Module):
    def forward(self, t):
        return 2 * t


class AddOne(nn.Module):
    def forward(self, t):
        return t + 1


def test_select_keeps_model_order_and_reports_unknown_names():
    model = block()
    assert list(layers.select(model, ["ffn.fc2", "attn.q", "attn.*"])) == ["attn.q", "attn.k", "attn.v", "attn.o",
                                                                          "ffn.fc2"]
    assert list(layers.select(model, nn.Linear)) == list(layers.select(model))
    with pytest.raises(ValueError, match="empty"):
        layers.select(model, [])
    with pytest.raises(TypeError, match="layers must be"):
        layers.select(model, 3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        layers.select("model")
    bare = nn.Linear(3, 2)
    assert list(layers.select(bare)) == [""]  # a bare layer is its own only layer


def test_select_values_lets_later_keys_override_earlier_ones():
    values = layers.select_values(block(), {"*": 0.5, "ffn.*": 0.8, "ffn.fc2": 0.1})
    assert values == {"attn.q": 0.5, "attn.k": 0.5, "attn.v": 0.5, "attn.o": 0.5, "ffn.fc1": 0.8, "ffn.fc2": 0.1}


def test_replace_returns_a_new_model_and_leaves_the_input_untouched():
    model = block()
    new = nn.Linear(32, 64)
    replaced = layers.replace(model, {"ffn.fc1": new})
    assert replaced.ffn.fc1 is new and model.ffn.fc1 is not new
    assert replaced.attn.q is not model.attn.q and torch.equal(replaced.attn.q.weight, model.attn.q.weight)
    with pytest.raises(ValueError, match="ffn.fc9"):
        layers.replace(model, {"ffn.fc9": new})


def test_coupling_validates_its_fields():
    assert layers.Coupling("a", ["b"]).consumers == ("b",)
    with pytest.raises(TypeError, match="consumers"):
        layers.Coupling("a", "b")
    with pytest.raises(ValueError, match="repeat"):
        layers.Coupling("a", ("b",), repeat=0)


def test_capture_features_expands_patterns_and_removes_its_hooks():
    model = block()
    with layers.capture_features(model, ["ffn.*"], kind="input") as seen:
        model(tokens(2))
    assert sorted(seen) == ["ffn.fc1", "ffn.fc2"] and seen["ffn.fc2"].shape == (2, 10, 64)
    assert not model.ffn.fc1._forward_hooks
    with layers.capture_features(model, []) as nothing:
        model(tokens(2))
    assert nothing == {}


def test_parametrizations_chain_in_order_and_bake_to_their_output():
    layer = nn.Linear(3, 2)
    w = layer.weight.detach().clone()
    parametrizations.attach_(layer, "weight", Double())
    parametrizations.attach_(layer, "weight", AddOne())
    assert [type(p) for p in parametrizations.chain(layer, "weight")] == [Double, AddOne]
    torch.testing.assert_close(layer.weight, 2 * w + 1)
    assert list(parametrizations.find(layer, AddOne)) == ["weight"]
    baked = parametrizations.bake(layer)
    assert not parametrizations.find(baked) and torch.equal(baked.weight, 2 * w + 1)
    assert parametrizations.find(layer)  # the input keeps its parametrizations
    with pytest.raises(ValueError, match="tensor_name"):
        parametrizations.attach_(layer, "scale", Double())


def test_baking_a_deep_copy_leaves_the_original_working():
    model = block()
    parametrizations.attach_(model.ffn.fc1, "weight", Double())
    x = tokens(2)
    expected = model(x)
    twin = copy.deepcopy(model)
    parametrizations.bake_(twin)
    parametrizations.attach_(twin.ffn.fc1, "bias", AddOne())  # a new parametrized tensor on the copy
    torch.testing.assert_close(model(x), expected)  # no AttributeError, same outputs
    assert parametrizations.find(model) and not parametrizations.find(twin, Double)


def test_bake_by_kind_leaves_other_parametrizations():
    model = block()
    parametrizations.attach_(model.attn.q, "weight", Double())
    parametrizations.attach_(model.ffn.fc1, "weight", AddOne())
    baked = parametrizations.bake(model, Double)
    assert list(parametrizations.find(baked)) == ["ffn.fc1.weight"]
    torch.testing.assert_close(baked.attn.q.weight, model.attn.q.weight)


@pytest.mark.parametrize("call, error, match", [
    (lambda: validate.integer(1.5, "rounds", 1), TypeError, "rounds must be an int >= 1"),
    (lambda: validate.integer(True, "rounds"), TypeError, "rounds"),
    (lambda: validate.integer(0, "rounds", 1), ValueError, "rounds must be an int >= 1, got 0"),
    (lambda: validate.number(math.nan, "lr", 0), ValueError, "lr must be a finite number >= 0"),
    (lambda: validate.number(math.inf, "lr"), ValueError, "lr"),
    (lambda: validate.number("0.1", "dropout", 0, 1), TypeError, "dropout must be a number in"),
    (lambda: validate.fraction(1.0, "sparsity"), ValueError, r"sparsity must be a finite number in \[0.0, 1.0\)"),
    (lambda: validate.choice("l3", "scope", ("layer", "global")), ValueError, "scope must be one of 'layer', 'global'"),
    (lambda: validate.tensor(torch.zeros(0), "x"), ValueError, "x must not be empty"),
    (lambda: validate.tensor([1.0], "x"), TypeError, "x must be a torch.Tensor"),
    (lambda: validate.tensor(torch.zeros(2, 2), "w", dim=1), ValueError, "w must be 1-d"),
    (lambda: validate.tensor(torch.tensor([math.nan]), "w", finite=True), ValueError, "finite"),
    (lambda: validate.bits(17, "index_bits"), ValueError, r"index_bits must be an int in \[1, 16\]"),
])
def test_validation_names_the_argument_and_the_allowed_range(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_validation_returns_the_checked_value():
    assert validate.integer(torch.tensor(3).item(), "n") == 3
    assert validate.number(torch.tensor(0.5), "p", 0, 1) == 0.5
    assert validate.choice("a", "c", "ab") == "a"
