"""The reference networks: architecture, parameter counts, and the registry's errors."""

import pytest
import torch

from nncompress import models

# Parameter counts worked out by hand from the layer shapes (weights + biases).
EXPECTED = {
    "lenet300_100": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,  # 266,610
    "lenet5": 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 500 * 10 + 10,  # 431,080
    "hinton_teacher": 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10,  # 2,395,210
    "hinton_student": 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10,  # 1,276,810
    "hinton_tiny": 784 * 30 + 30 + 30 * 30 + 30 + 30 * 10 + 10,  # 24,790
    "lenet5_thin": 5 * 25 + 5 + 10 * 5 * 25 + 10 + 160 * 50 + 50 + 50 * 10 + 10,  # 9,950
}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_parameter_counts_and_output_shape(name):
    model = models.build(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name]
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_is_the_caffe_variant():
    m = models.lenet5()
    assert (m.conv1.out_channels, m.conv1.kernel_size, m.conv2.out_channels, m.conv2.kernel_size) == (20, (5, 5), 50, (5, 5))
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.out_features) == (800, 500, 10)
    # no non-linearity after the convolutions: scaling the input scales conv2's output map linearly
    x = torch.randn(2, 1, 28, 28)
    feats = {}
    m.conv2.register_forward_hook(lambda mod, i, o: feats.__setitem__("in", i[0]))
    m(x)
    expected = torch.nn.functional.max_pool2d(m.conv1(x), 2)
    torch.testing.assert_close(feats["in"], expected)


def test_teacher_uses_dropout_only_in_training():
    teacher = models.hinton_teacher()
    x = torch.randn(4, 1, 28, 28)
    torch.manual_seed(0)
    assert not torch.equal(teacher.train()(x), teacher(x))
    assert torch.equal(teacher.eval()(x), teacher(x))
    assert teacher.dropout.p == 0.5 and teacher.input_dropout.p == 0.2


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model name 'lenet7'.*lenet300_100"):
        models.build("lenet7")
    with pytest.raises(TypeError, match="name must be a str"):
        models.build(5)


@pytest.mark.parametrize("kwargs, match", [({"hidden": ()}, "hidden"), ({"hidden": (0,)}, "hidden"),
                                           ({"hidden": (10,), "dropout": 1.0}, "dropout"),
                                           ({"hidden": (10,), "input_dropout": -0.1}, "input_dropout")])
def test_mlp_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.MLP(**kwargs)


def test_a_non_numeric_dropout_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="dropout must be a number"):
        models.MLP((10,), dropout="0.5")


@pytest.mark.parametrize("name", ["lenet300_100", "lenet5"])
def test_couplings_match_the_layer_shapes(name):
    model = models.build(name)
    for coupling in models.couplings(model):
        producer = model.get_submodule(coupling.producer)
        outputs = producer.weight.shape[0]
        for consumer in coupling.consumers:
            assert model.get_submodule(consumer).weight.shape[1] == outputs * coupling.repeat


def test_couplings_are_declared_only_for_the_books_networks():
    with pytest.raises(TypeError, match="Coupling"):
        models.couplings(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_as_sequential_computes_the_same_function_with_the_same_names(name):
    torch.manual_seed(0)
    model = models.build(name).eval()
    chain = models.as_sequential(model).eval()
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(chain(x), model(x))
    weights = {k for k in model.state_dict()}
    assert weights == {k for k in chain.state_dict()}  # same names: state dicts load across
    assert chain is not model and models.as_sequential(chain) is not chain
