"""The store of trained checkpoints: baselines and pruned models, shipped, cached or made (distilled
students: test_store_distilled.py)."""

import dataclasses

import pytest
import torch

import nncompress as nc
from nncompress import data, models, pruning, store, text, train
from nncompress.train import Recipe

from conftest import blobs

@pytest.fixture
def tiny_store(tmp_path, monkeypatch):
    """A store with no shipped files, a tiny recipe, and synthetic data."""
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(store.core, "SHIPPED_DIR", tmp_path / "shipped")
    monkeypatch.setitem(store.RECIPES, "lenet300_100", {"tiny": Recipe(epochs=1, lr=0.05)})
    x, y = blobs(300)
    return data.MNIST(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:])


def test_store_trains_once_then_loads_from_cache(tiny_store, tmp_path):
    model = store.baseline("lenet300_100", "tiny", seed=1, data=tiny_store)
    path = tmp_path / "cache" / "lenet300_100-tiny-seed1.pt"
    assert path.exists()
    checkpoint = store.read_checkpoint(path)
    assert checkpoint["seed"] == 1 and checkpoint["recipe"]["epochs"] == 1
    stamp = path.stat().st_mtime_ns
    again = store.baseline("lenet300_100", "tiny", seed=1, data=tiny_store)
    assert path.stat().st_mtime_ns == stamp  # loaded, not retrained
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not again.training


def test_store_rebuilds_a_stale_or_corrupt_cache_entry(tiny_store, tmp_path, monkeypatch):
    store.baseline("lenet300_100", "tiny", data=tiny_store)
    path = tmp_path / "cache" / "lenet300_100-tiny-seed0.pt"
    monkeypatch.setitem(store.RECIPES, "lenet300_100", {"tiny": Recipe(epochs=2, lr=0.05)})
    assert store.baseline_info("lenet300_100", "tiny", data=tiny_store)["recipe"]["epochs"] == 2
    path.write_bytes(b"not a checkpoint")
    assert store.baseline_info("lenet300_100", "tiny", data=tiny_store)["recipe"]["epochs"] == 2


def test_store_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model name"):
        store.baseline("resnet")
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        store.baseline("lenet5", "fast")


# MNIST baselines only; pruned checkpoints are tested below, distilled students in test_store_distilled.py,
# the sentence-encoder student in test_text_student.py, the character-level GPTs in test_gpt.py
SHIPPED = sorted(p for p in store.SHIPPED_DIR.glob("*.pt")
                 if "-pruned_" not in p.name and "-distilled" not in p.name
                 and p.name.split("-seed")[0] not in text.GPTS)  # the GPTs: test_gpt.py
HAVE_MNIST = (data.data_dir() / "mnist").is_dir()
LIMITS = {"lenet300_100": 0.018, "lenet5": 0.010, "hinton_teacher": 0.012,  # test-error targets
          "hinton_student": 0.0166}  # within 20 errors of Hinton et al.'s 146
# Hinton et al.'s teachers and the 200-epoch jittered student take 15 to 40 minutes to train on 2 cores:
# too long to retrain in CI.
RETRAINED = [p for p in SHIPPED if not p.name.startswith(("hinton_teacher", "hinton_student-jitter"))]


def test_the_paper_teacher_meets_hinton_et_al_s_budget_of_80_errors():
    """Hinton et al.'s teacher made 67 test errors; issue 17 asks for at most 80, with max-norm."""
    checkpoint = store.baseline_info("hinton_teacher", "paper")
    assert round(10_000 * checkpoint["test_error"]) <= 80 and checkpoint["recipe"]["max_norm"] > 0


def test_shipped_checkpoints_exist_and_are_no_larger_than_their_weights():
    names = {p.name for p in SHIPPED}
    assert {"lenet300_100-default-seed0.pt", "lenet5-default-seed0.pt", "hinton_teacher-default-seed0.pt",
            "hinton_teacher-paper-seed0.pt", "hinton_student-default-seed0.pt", "hinton_student-jitter-seed0.pt"} <= names
    for path in SHIPPED:
        name = store.read_checkpoint(path)["model"]
        weights = 4 * sum(p.numel() for p in models.build(name).parameters())
        assert path.stat().st_size <= weights + 20_000, path  # fp32 weights plus a small header


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_checkpoint_matches_its_recipe_and_loads_safely(path):
    checkpoint = store.read_checkpoint(path)
    name, recipe = checkpoint["model"], checkpoint["recipe_name"]
    assert checkpoint["recipe"] == dataclasses.asdict(store.RECIPES[name][recipe])
    assert checkpoint["test_error"] <= LIMITS[name]
    models.build(name).load_state_dict(checkpoint["state_dict"])  # strict: every key matches


@pytest.mark.skipif(not HAVE_MNIST, reason="full MNIST not in the data directory")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_checkpoint_reaches_its_recorded_error(path):
    checkpoint = store.read_checkpoint(path)
    mnist = data.load_mnist()
    model = store.baseline(checkpoint["model"], checkpoint["recipe_name"], checkpoint["seed"])
    assert train.test_error(model, mnist) == pytest.approx(100 * checkpoint["test_error"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MNIST, reason="full MNIST not in the data directory")
@pytest.mark.parametrize("path", RETRAINED, ids=lambda p: p.name)
def test_script_reproduces_shipped_accuracy(path):
    """Retrain with the script's function: the test error must agree within 0.1 point."""
    shipped = store.read_checkpoint(path)
    rebuilt = store.train_baseline(shipped["model"], shipped["recipe_name"], shipped["seed"])
    assert abs(rebuilt["test_error"] - shipped["test_error"]) <= 0.001


@pytest.fixture
def tiny_pruned_store(tmp_path, monkeypatch):
    """A store with no shipped files, tiny baseline and pruning recipes, and synthetic data."""
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(store.core, "SHIPPED_DIR", tmp_path / "shipped")
    monkeypatch.setitem(store.RECIPES, "lenet300_100", {"tiny": Recipe(epochs=1, lr=0.05)})
    spec = store.PruneRecipe({"fc1": 0.9, "fc3": 0.5}, Recipe(epochs=1, lr=1e-3, optimizer="adam"),
                               fractions=(0.5, 1.0), baseline="tiny")
    monkeypatch.setitem(store.PRUNED, "lenet300_100", {"tiny": spec})
    x, y = blobs(300)
    return data.MNIST(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:])


def test_pruned_store_prunes_once_then_loads_from_cache(tiny_pruned_store, tmp_path):
    model = store.pruned_baseline("lenet300_100", "tiny", seed=1, data=tiny_pruned_store)
    path = tmp_path / "cache" / "lenet300_100-pruned_tiny-seed1.pt"
    assert path.exists() and (tmp_path / "cache" / "lenet300_100-tiny-seed1.pt").exists()  # baseline too
    checkpoint = store.read_checkpoint(path)
    sparsity = pruning.layer_sparsity(model)
    assert checkpoint["layer_sparsity"] == sparsity
    assert sparsity["fc1"] == pytest.approx(0.9, abs=1e-4) and sparsity["fc3"] == pytest.approx(0.5, abs=1e-3)
    assert sparsity["fc2"] == 0.0 and not nc.parametrizations.find(model)
    stamp = path.stat().st_mtime_ns
    again = store.pruned_baseline("lenet300_100", "tiny", seed=1, data=tiny_pruned_store)
    assert path.stat().st_mtime_ns == stamp  # loaded, not pruned again
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_make_pruned_prunes_the_baseline_to_its_targets_and_retrains(tiny_pruned_store):
    made = store.make_pruned("lenet300_100", "tiny", seed=0, data=tiny_pruned_store)
    spec = store.PRUNED["lenet300_100"]["tiny"]
    assert spec.schedule() == [{"fc1": 0.45, "fc3": 0.25}, {"fc1": 0.9, "fc3": 0.5}]
    model = models.build("lenet300_100")
    model.load_state_dict(made["state_dict"])  # strict: plain weights, no masks
    zeros = {name: int((m.weight == 0).sum()) for name, m in nc.layers.select(model).items()}
    assert zeros == {"fc1": round(0.9 * 784 * 300), "fc2": 0, "fc3": round(0.5 * 100 * 10)}  # exact counts
    assert made["layer_sparsity"] == pruning.layer_sparsity(model)
    base = store.baseline("lenet300_100", "tiny", seed=0, data=tiny_pruned_store)
    kept = model.fc1.weight != 0
    assert not torch.equal(model.fc1.weight[kept], base.fc1.weight[kept])  # the survivors were retrained
    test = tiny_pruned_store
    assert made["test_error"] == pytest.approx(1 - train.evaluate(model, test.test_x, test.test_y))
    again = store.make_pruned("lenet300_100", "tiny", seed=0, data=tiny_pruned_store)
    for key, value in made["state_dict"].items():  # deterministic for a seed
        assert torch.equal(again["state_dict"][key], value), key


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity={}), "at least one layer"),
    (dict(sparsity={"fc1": 1.2}), r"sparsity\['fc1'\]"),
    (dict(fractions=(0.5, 0.9)), "end with 1"),
    (dict(fractions=(0.0, 1.0)), r"fractions\[0\] must be a finite number in \(0, 1\]"),
])
def test_prune_recipe_rejects_bad_values(kwargs, match):
    args = dict(sparsity={"fc1": 0.5}, retrain=Recipe(epochs=1, lr=0.1)) | kwargs
    with pytest.raises(ValueError, match=match):
        store.PruneRecipe(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity={"fc1": "0.9"}), r"sparsity\['fc1'\] must be a number"),
    (dict(sparsity=["fc1"]), "sparsity must be a mapping"),
    (dict(retrain={"epochs": 1}), "retrain must be an nncompress.train.Recipe"),
    (dict(fractions=(0.5, "1")), r"fractions\[1\] must be a number"),
])
def test_prune_recipe_rejects_values_of_the_wrong_kind(kwargs, match):
    args = dict(sparsity={"fc1": 0.5}, retrain=Recipe(epochs=1, lr=0.1)) | kwargs
    with pytest.raises(TypeError, match=match):
        store.PruneRecipe(**args)


def test_unknown_pruning_recipe_is_rejected():
    with pytest.raises(ValueError, match="unknown pruning recipe 'fast'"):
        store.pruned_info("lenet5", "fast")


SHIPPED_PRUNED = sorted(store.SHIPPED_DIR.glob("*-pruned_*.pt"))
PRUNED_LIMITS = {"lenet300_100": 0.016, "lenet5": 0.0075}  # Han et al.: 1.59 %, 0.77 %; LeNet-5: baseline + 0.1 point


def test_pruned_checkpoints_are_shipped_for_both_lenets():
    assert {p.name for p in SHIPPED_PRUNED} >= {"lenet300_100-pruned_han-seed0.pt", "lenet5-pruned_han-seed0.pt",
                                              "lenet5-pruned_deep-seed0.pt"}


@pytest.mark.parametrize("path", SHIPPED_PRUNED, ids=lambda p: p.name)
def test_shipped_pruned_checkpoint_matches_its_recipe(path):
    checkpoint = store.read_checkpoint(path)
    name, recipe = checkpoint["model"], checkpoint["recipe_name"]
    spec = store.PRUNED[name][recipe]
    assert checkpoint["recipe"] == dataclasses.asdict(spec)
    assert checkpoint["test_error"] <= PRUNED_LIMITS[name]
    model = models.build(name)
    model.load_state_dict(checkpoint["state_dict"])  # strict: plain weights, no masks
    sparsity = pruning.layer_sparsity(model)
    assert sparsity == checkpoint["layer_sparsity"]
    for layer, target in spec.sparsity.items():
        assert sparsity[layer] == pytest.approx(target, abs=1e-3), layer


@pytest.mark.skipif(not (data.data_dir() / "mnist").is_dir(), reason="full MNIST not in the data directory")
@pytest.mark.parametrize("path", SHIPPED_PRUNED, ids=lambda p: p.name)
def test_shipped_pruned_checkpoint_reaches_its_recorded_error(path):
    checkpoint = store.read_checkpoint(path)
    mnist = data.load_mnist()
    model = store.pruned_baseline(checkpoint["model"], checkpoint["recipe_name"], checkpoint["seed"])
    assert train.test_error(model, mnist) == pytest.approx(100 * checkpoint["test_error"], abs=1e-4)
