"""The store's distilled students: recipes, making, caching, and the shipped checkpoints."""

import dataclasses

import pytest
import torch

from nncompress import data, distillation, models, store, train
from nncompress.store import DistillRecipe, DistillStage
from nncompress.train import Recipe

from conftest import blobs

ONE_EPOCH = Recipe(epochs=1, lr=1e-3, optimizer="adam")


@pytest.fixture
def tiny_distilled_store(tmp_path, monkeypatch):
    """A store with no shipped files, a tiny teacher recipe, tiny students, and synthetic data."""
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(store.core, "SHIPPED_DIR", tmp_path / "shipped")
    monkeypatch.setitem(store.RECIPES, "lenet300_100", {"tiny": Recipe(epochs=2, lr=0.05)})
    kd = ("kd", {"temperature": 4.0, "alpha": 0.9})
    monkeypatch.setitem(store.DISTILLED, "hinton_tiny", {
        "scratch": DistillRecipe("lenet300_100", (DistillStage((("ce", {}),), ONE_EPOCH),), 150, "tiny"),
        "kd": DistillRecipe("lenet300_100", (DistillStage((kd,), ONE_EPOCH),), 150, "tiny"),
        "ce_then_kd": DistillRecipe("lenet300_100", (DistillStage((("ce", {}),), ONE_EPOCH),
                                                     DistillStage((kd,), Recipe(epochs=2, lr=1e-3, optimizer="adam"))),
                                    150, "tiny"),
    })
    x, y = blobs(300)
    return data.MNIST(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:])


def test_distilled_store_trains_once_then_loads_from_cache(tiny_distilled_store, tmp_path):
    model = store.distilled("hinton_tiny", "kd", seed=1, data=tiny_distilled_store)
    path = tmp_path / "cache" / "hinton_tiny-distilled_kd-seed1.pt"
    assert path.exists() and (tmp_path / "cache" / "lenet300_100-tiny-seed0.pt").exists()  # the teacher too
    checkpoint = store.read_checkpoint(path)
    assert checkpoint["recipe"] == dataclasses.asdict(store.DISTILLED["hinton_tiny"]["kd"])
    assert checkpoint["model"] == "hinton_tiny" and checkpoint["seed"] == 1
    stamp = path.stat().st_mtime_ns
    again = store.distilled("hinton_tiny", "kd", seed=1, data=tiny_distilled_store)
    assert path.stat().st_mtime_ns == stamp  # loaded, not trained again
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not again.training and isinstance(again, models.MLP) and again.fc1.out_features == 30


def test_make_distilled_is_the_documented_distill_run(tiny_distilled_store):
    """Seed, build the student, then one distill run per stage on the first n_transfer images."""
    mnist = tiny_distilled_store
    made = store.make_distilled("hinton_tiny", "ce_then_kd", seed=3, data=mnist)
    teacher = store.baseline("lenet300_100", "tiny", data=mnist)
    x, y = mnist.train_x[:150], mnist.train_y[:150]
    train.set_seed(3)
    student = models.hinton_tiny()
    distillation.distill(student, None, x, y, ONE_EPOCH, [distillation.CrossEntropy()], seed=3)
    distillation.distill(student, teacher, x, y, Recipe(epochs=2, lr=1e-3, optimizer="adam"),
                         [distillation.KD(4.0, alpha=0.9)], seed=3)
    for key, value in student.state_dict().items():
        assert torch.equal(made["state_dict"][key], value), key
    assert [len(losses) for losses in made["stage_losses"]] == [1, 2]
    assert made["test_error"] == pytest.approx(1 - train.evaluate(student, mnist.test_x, mnist.test_y))


def test_a_student_from_labels_alone_never_loads_the_teacher(tiny_distilled_store, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(store.students, "baseline", no_teacher)
    store.make_distilled("hinton_tiny", "scratch", data=tiny_distilled_store)
    with pytest.raises(AssertionError, match="the teacher was loaded"):
        store.make_distilled("hinton_tiny", "kd", data=tiny_distilled_store)


def test_distillation_recipes_differ_in_what_they_make(tiny_distilled_store):
    scratch = store.make_distilled("hinton_tiny", "scratch", data=tiny_distilled_store)["state_dict"]
    kd = store.make_distilled("hinton_tiny", "kd", data=tiny_distilled_store)["state_dict"]
    assert not torch.equal(scratch["fc1.weight"], kd["fc1.weight"])


def test_terms_are_built_afresh_for_every_student():
    stage = store.DISTILLED["lenet5_thin"]["hint_kd"].stages[0]
    first, second = stage.build_terms()[0], stage.build_terms()[0]
    assert isinstance(first, distillation.Hint) and first is not second
    assert stage.needs_teacher and not store.DISTILLED["lenet5_thin"]["scratch"].stages[0].needs_teacher


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(terms=()), ValueError, "terms must name at least one loss term"),
    (dict(terms=(("kl", {}),)), ValueError, r"terms\[0\] has unknown kind 'kl'"),
    (dict(terms=("kd",)), TypeError, r"terms\[0\] must be a \(kind, kwargs\) pair"),
    (dict(terms=(("kd", [4.0]),)), TypeError, r"terms\[0\] must be a \(kind, kwargs\) pair"),
    (dict(recipe={"epochs": 1}), TypeError, "recipe must be an nncompress.train.Recipe"),
])
def test_distill_stage_rejects_bad_values(kwargs, error, match):
    args = dict(terms=(("ce", {}),), recipe=ONE_EPOCH) | kwargs
    with pytest.raises(error, match=match):
        DistillStage(**args)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(stages=()), ValueError, "stages must hold at least one DistillStage"),
    (dict(stages=({"terms": (("ce", {}),)},)), TypeError, "every stage must be a DistillStage"),
    (dict(n_transfer=0), ValueError, "n_transfer"),
    (dict(n_transfer=1.5), TypeError, "n_transfer"),
])
def test_distill_recipe_rejects_bad_values(kwargs, error, match):
    args = dict(teacher="lenet5", stages=(DistillStage((("ce", {}),), ONE_EPOCH),)) | kwargs
    with pytest.raises(error, match=match):
        DistillRecipe(**args)


def test_training_recipe_and_targets_read_the_final_stage(tiny_distilled_store):
    """A baseline's recipe and "labels"; a distilled student's final stage, in words."""
    teacher = store.baseline_info("lenet300_100", "tiny", data=tiny_distilled_store)
    assert store.training_recipe(teacher) == dataclasses.asdict(Recipe(epochs=2, lr=0.05))
    assert store.describe_targets(teacher) == "labels"
    two_stages = store.distilled_info("hinton_tiny", "ce_then_kd", data=tiny_distilled_store)
    assert store.training_recipe(two_stages) == dataclasses.asdict(Recipe(epochs=2, lr=1e-3, optimizer="adam"))
    assert store.describe_targets(two_stages) == "soft and labels (T = 4, α = 0.9)"
    scratch = store.distilled_info("hinton_tiny", "scratch", data=tiny_distilled_store)
    assert store.describe_targets(scratch) == "labels" and store.training_recipe(scratch)["epochs"] == 1


def test_targets_name_every_kind_of_term():
    def stage(*terms):
        return {"recipe": {"stages": [{"terms": list(terms), "recipe": {}}]}}
    assert store.describe_targets(stage(("kd", {"temperature": 2.0}))) == "soft (T = 2)"  # alpha defaults to 1
    hint = ("hint", {"student_layer": "conv2", "teacher_layer": "conv2", "student_channels": 10,
                     "teacher_channels": 50})
    assert store.describe_targets(stage(hint)) == "hint (conv2)"
    attention = ("attention", {"pairs": (("conv1", "conv1"),), "weight": 5.0})
    assert store.describe_targets(stage(("kd", {"temperature": 4.0, "alpha": 0.9}), attention)) == \
        "soft and labels (T = 4, α = 0.9) + attention (5)"


@pytest.mark.parametrize("checkpoint, error, match", [
    ([("recipe", {})], TypeError, "checkpoint must be a mapping"),
    ({"state_dict": {}}, ValueError, "'recipe' mapping"),
    ({"recipe": "default"}, ValueError, "'recipe' mapping"),
])
def test_training_recipe_rejects_what_is_not_a_checkpoint(checkpoint, error, match):
    for read in (store.training_recipe, store.describe_targets):
        with pytest.raises(error, match=match):
            read(checkpoint)


def test_unknown_distillation_recipe_is_rejected():
    with pytest.raises(ValueError, match="unknown distillation recipe 'fast' for model 'lenet5_thin'"):
        store.distilled_info("lenet5_thin", "fast")


SHIPPED = sorted(store.SHIPPED_DIR.glob("*-distilled_*.pt"))
HAVE_MNIST = (data.data_dir() / "mnist").is_dir()


def test_the_distillation_chapters_students_are_shipped():
    """Every student the hints and Hinton notebooks load: 3 seeds of each method, seed 0 of the
    attention-weight sweep, and seed 0 of the 2x800 students of Hinton et al.'s full experiment."""
    names = {p.name for p in SHIPPED}
    want = {store.distilled_filename("lenet5_thin", r, s) for r in ("scratch", "kd", "attention1", "hint_kd")
            for s in (0, 1, 2)}
    want |= {store.distilled_filename("lenet5_thin", r, 0) for r in ("attention5", "attention20")}
    want |= {store.distilled_filename("hinton_tiny", r, s) for r in store.DISTILLED["hinton_tiny"] for s in (0, 1, 2)}
    want |= {store.distilled_filename("hinton_student", r, 0) for r in store.DISTILLED["hinton_student"]}
    assert want <= names, sorted(want - names)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_student_matches_its_recipe_and_loads_safely(path):
    checkpoint = store.read_checkpoint(path)
    name, recipe = checkpoint["model"], checkpoint["recipe_name"]
    assert path.name == store.distilled_filename(name, recipe, checkpoint["seed"])
    assert checkpoint["recipe"] == dataclasses.asdict(store.DISTILLED[name][recipe])
    weights = 4 * sum(p.numel() for p in models.build(name).parameters())
    assert path.stat().st_size <= weights + 20_000  # fp32 weights plus a small header
    models.build(name).load_state_dict(checkpoint["state_dict"])  # strict: every key matches


@pytest.mark.skipif(not HAVE_MNIST, reason="full MNIST not in the data directory")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_student_reaches_its_recorded_error(path):
    checkpoint = store.read_checkpoint(path)
    model = store.distilled(checkpoint["model"], checkpoint["recipe_name"], checkpoint["seed"])
    assert train.test_error(model, data.load_mnist()) == pytest.approx(100 * checkpoint["test_error"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MNIST, reason="full MNIST not in the data directory")
@pytest.mark.parametrize("name, recipe", [("lenet5_thin", "hint_kd"), ("hinton_tiny", "kd_t4")])
def test_script_reproduces_a_shipped_student(name, recipe):
    """Retrain with the script's function. The same CPU gives the same student; another CPU rounds
    differently, and the test error must still agree within 0.2 point (about a seed's spread)."""
    shipped = store.distilled_info(name, recipe, seed=0)
    rebuilt = store.make_distilled(name, recipe, seed=0)
    assert abs(rebuilt["test_error"] - shipped["test_error"]) <= 0.002
