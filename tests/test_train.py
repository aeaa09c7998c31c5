"""Training loops, determinism, jitter, and the baseline store."""

import dataclasses

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress import data, models, train
from nncompress.train import Recipe

from conftest import blobs




def test_set_seed_makes_runs_repeatable():
    x, y = blobs()
    recipe = Recipe(epochs=2, lr=0.05, batch_size=64, jitter=1)
    weights = []
    for _ in range(2):
        nc.set_seed(3)
        model = models.hinton_student()  # has no dropout; the teacher adds dropout below
        train.fit(model, x, y, recipe, seed=3)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    with pytest.raises(ValueError, match="seed"):
        nc.set_seed(-1)


def test_fit_learns_and_evaluate_counts_correct_predictions():
    x, y = blobs()
    nc.set_seed(0)
    model = models.lenet_300_100()
    before = train.evaluate(model, x, y)
    losses = train.fit(model, x, y, Recipe(epochs=3, lr=0.05, batch_size=32), seed=0)
    assert losses[-1] < losses[0]
    after = train.evaluate(model, x, y)
    assert after > 0.95 > before
    manual = (model(x).argmax(1) == y).float().mean().item()
    assert after == pytest.approx(manual)


def test_fit_accepts_a_custom_loss_and_epoch_callback():
    x, y = blobs(200)
    seen = []
    model = models.lenet_300_100()
    loss_fn = lambda m, xb, yb: m(xb).pow(2).mean()  # noqa: E731
    steps = []
    losses = train.fit(model, x, y, Recipe(epochs=2, lr=0.01, batch_size=64), loss_fn=loss_fn,
                       on_epoch_end=lambda epoch, m: seen.append(epoch), on_step_end=lambda s, m: steps.append(s))
    assert seen == [1, 2] and losses[1] < losses[0]
    assert steps == list(range(1, 2 * 4 + 1))  # 200 samples in batches of 64: 4 steps per epoch


def test_random_shift_translates_each_image():
    x = torch.zeros(8, 1, 28, 28)
    x[:, 0, 13, 13] = 1.0  # one bright pixel in the middle
    out = train._random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))
    positions = out[:, 0].flatten(1).argmax(1)
    rows, cols = positions // 28, positions % 28
    assert ((rows - 13).abs() <= 2).all() and ((cols - 13).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 1  # not all the same shift
    assert torch.equal(train._random_shift(x, 0, torch.Generator()), x)


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", 0.0), ("batch_size", 0), ("optimizer", "rmsprop"),
                                          ("schedule", "step"), ("jitter", 5), ("momentum", 1.0),
                                          ("weight_decay", -1e-4), ("lr", float("nan"))])
def test_recipe_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(Recipe(epochs=1, lr=0.1), **{field: value})


@pytest.mark.parametrize("field, value", [("epochs", 1.5), ("lr", "0.1"), ("jitter", True)])
def test_recipe_rejects_values_of_the_wrong_type(field, value):
    with pytest.raises(TypeError, match=field):
        dataclasses.replace(Recipe(epochs=1, lr=0.1), **{field: value})


def test_fit_rejects_mismatched_or_empty_data():
    x, y = blobs(10)
    model = models.MLP((8,))
    with pytest.raises(ValueError, match="equal length"):
        train.fit(model, x, y[:5], Recipe(epochs=1, lr=0.1))
    with pytest.raises(ValueError, match="x must not be empty"):
        train.fit(model, x[:0], y[:0], Recipe(epochs=1, lr=0.1))
    with pytest.raises(ValueError, match="seed"):
        train.fit(model, x, y, Recipe(epochs=1, lr=0.1), seed=-1)


def test_non_module_is_rejected():
    x, y = blobs(10)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        train.fit(lambda t: t, x, y, Recipe(epochs=1, lr=0.1))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        train.evaluate("model", x, y)


def test_test_error_is_the_percentage_of_wrong_predictions():
    x, y = blobs(300)
    split = data.MNIST(x[:100], y[:100], x[100:200], y[100:200], x[200:], y[200:])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    wrong = (train.predict(model, x[200:]).argmax(1) != y[200:]).sum().item()
    assert train.test_error(model, split) == pytest.approx(wrong)  # 100 test images: one error is 1 %
    assert train.test_error(model, split, "val") == pytest.approx(
        (train.predict(model, x[100:200]).argmax(1) != y[100:200]).sum().item())
    with pytest.raises(ValueError, match="split must be one of"):
        train.test_error(model, split, "dev")


def test_max_norm_caps_every_hidden_unit_and_leaves_the_output_layer_free():
    torch.manual_seed(0)
    x, y = torch.randn(256, 1, 28, 28) * 5, torch.randint(0, 10, (256,))
    model = models.MLP((64, 32))
    train.fit(model, x, y, Recipe(epochs=3, lr=0.5, batch_size=32, max_norm=0.5), seed=0)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in linears[:-1]:
        assert layer.weight.norm(dim=1).max() <= 0.5 + 1e-5
        assert layer.weight.norm(dim=1).max() > 0.49  # the constraint is active, not vacuous
    assert linears[-1].weight.norm(dim=1).max() > 0.5  # the output layer is not constrained
    free = models.MLP((64, 32))
    torch.manual_seed(0)
    train.fit(free, x, y, Recipe(epochs=3, lr=0.5, batch_size=32), seed=0)
    assert max(m.weight.norm(dim=1).max() for m in free.modules() if isinstance(m, nn.Linear)) > 0.5


def test_max_norm_rescales_convolution_filters_as_whole_vectors():
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight.mul_(100)
    before = conv.weight.detach().clone()
    train._max_norm_([conv], 1.0)
    norms = conv.weight.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5)
    cosine = nn.functional.cosine_similarity(conv.weight.flatten(1), before.flatten(1), dim=1)
    assert torch.allclose(cosine, torch.ones(3), atol=1e-5)  # directions unchanged


def test_max_norm_refuses_parametrized_weights_it_could_not_rescale():
    model = nc.pruning.prune_magnitude(models.MLP((16,)), 0.5)  # masks attached: weight is computed
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    with pytest.raises(ValueError, match="max_norm needs plain weights"):
        train.fit(model, x, y, Recipe(epochs=1, lr=0.1, max_norm=1.0))


def test_max_norm_must_be_non_negative():
    with pytest.raises(ValueError, match="max_norm"):
        Recipe(epochs=1, lr=0.1, max_norm=-1.0)
