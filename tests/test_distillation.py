"""nncompress.distillation: losses against hand-computed references, the properties the papers
state (T^2 gradient scale, logit-matching limit, invariances), the hook helper and the loop."""

import copy
import math

import pytest
import torch
from torch import nn

from nncompress import distillation as kd
from nncompress.layers import capture_features
from nncompress.models import LeNet5, MLP
from nncompress.train import Recipe, fit


def logits(seed, shape=(8, 10), scale=3.0, dtype=torch.float64):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- Hinton's loss

@pytest.mark.parametrize("temperature", [1.0, 2.5, 20.0])
def test_kd_loss_equals_hand_computed_reference(temperature):
    s, t = logits(0), logits(1)
    p_t = [[math.exp(v / temperature) for v in row] for row in t.tolist()]
    p_s = [[math.exp(v / temperature) for v in row] for row in s.tolist()]
    total = 0.0
    for a, b in zip(p_t, p_s):
        za, zb = sum(a), sum(b)
        total += sum(x / za * math.log((x / za) / (y / zb)) for x, y in zip(a, b))
    want = temperature**2 * total / len(s)
    assert kd.kd_loss(s, t, temperature).item() == pytest.approx(want, rel=1e-10)


def test_kd_loss_mixes_soft_and_hard_terms_with_alpha():
    s, t = logits(2), logits(3)
    y = torch.arange(8) % 10
    soft = kd.kd_loss(s, t, 4.0)
    hard = nn.functional.cross_entropy(s, y)
    assert kd.kd_loss(s, t, 4.0, alpha=0.3, targets=y).item() == pytest.approx((0.3 * soft + 0.7 * hard).item())
    assert kd.kd_loss(s, t, 4.0, alpha=0.0, targets=y).item() == pytest.approx(hard.item())


@pytest.mark.parametrize("temperature", [1.0, 3.0, 20.0])
def test_kd_gradient_is_t_times_probability_gap_over_batch(temperature):
    s, t = logits(4).requires_grad_(), logits(5)
    kd.kd_loss(s, t, temperature).backward()
    p_s = torch.softmax(s.detach() / temperature, 1)
    p_t = torch.softmax(t / temperature, 1)
    torch.testing.assert_close(s.grad, temperature * (p_s - p_t) / len(s), rtol=1e-10, atol=1e-12)


def test_kd_loss_does_not_train_the_teacher():
    s, t = logits(6).requires_grad_(), logits(7).requires_grad_()
    kd.kd_loss(s, t, 2.0).backward()
    assert t.grad is None


def test_high_temperature_limit_is_logit_matching():
    s, t = logits(8, scale=2.0), logits(9, scale=2.0)
    target = kd.logit_matching_loss(s, t).item()
    gaps = [abs(kd.kd_loss(s, t, temperature).item() - target) for temperature in (2, 10, 100, 1000)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 1e-3 * target
    assert gaps[2] / gaps[3] == pytest.approx(10, rel=0.05)  # the gap shrinks as 1/T
    # the gradients converge too: T (p_s - p_t) -> (d - mean d) / N
    a = s.clone().requires_grad_()
    kd.kd_loss(a, t, 10000.0).backward()
    b = s.clone().requires_grad_()
    kd.logit_matching_loss(b, t).backward()
    assert (a.grad - b.grad).abs().max() < 1e-3 * b.grad.abs().max()


def test_logit_matching_ignores_constant_shifts_like_softmax():
    s, t = logits(10), logits(11)
    shifted = kd.logit_matching_loss(s + 5.0, t - torch.arange(8.0, dtype=torch.float64)[:, None])
    assert shifted.item() == pytest.approx(kd.logit_matching_loss(s, t).item())


def test_soft_targets_are_distributions_that_soften_with_temperature():
    z = logits(12)
    cold, hot = kd.soft_targets(z, 1.0), kd.soft_targets(z, 10.0)
    torch.testing.assert_close(hot.sum(1), torch.ones(8, dtype=torch.float64))
    entropy = lambda p: -(p * p.log()).sum(1)  # noqa: E731
    assert (entropy(hot) > entropy(cold)).all()


@pytest.mark.parametrize("temperature,error", [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                               (float("inf"), ValueError), (True, TypeError), ("2", TypeError)])
def test_bad_temperature_is_rejected(temperature, error):
    with pytest.raises(error, match="temperature"):
        kd.kd_loss(logits(0), logits(1), temperature)
    with pytest.raises(error, match="temperature"):
        kd.KD(temperature)
    with pytest.raises(error, match="temperature"):
        kd.soft_targets(logits(0), temperature)


@pytest.mark.parametrize("loss", [
    lambda s, t: kd.kd_loss(s, t, 4.0),
    lambda s, t: kd.kd_loss(s, t, 4.0, alpha=0.5, targets=torch.zeros(0, dtype=torch.long)),
    kd.logit_matching_loss,
])
def test_losses_on_an_empty_batch_raise_instead_of_returning_nan(loss):
    with pytest.raises(ValueError, match="empty"):
        loss(torch.zeros(0, 10), torch.zeros(0, 10))


def test_feature_losses_on_an_empty_batch_raise():
    empty = torch.zeros(0, 4, 5, 5)
    with pytest.raises(ValueError, match="empty"):
        kd.attention_transfer_loss(empty, empty)
    with pytest.raises(ValueError, match="empty"):
        kd.HintLoss(4, 4)(empty, empty)
    with pytest.raises(ValueError, match="batch"):
        kd.rkd_distance_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="empty"):
        kd.CrossEntropy()(kd.Outputs(torch.zeros(0, 10)), None, torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("make,name", [
    (lambda: kd.Relational(distance_weight=-1.0), "distance_weight"),
    (lambda: kd.Relational(angle_weight=float("nan")), "angle_weight"),
    (lambda: kd.KD(2.0, weight=-0.5), "weight"),
    (lambda: kd.Attention([("a", "b")], p=0), "p"),
    (lambda: kd.HintLoss(3, 0), "teacher_channels"),
])
def test_messages_name_the_argument_the_caller_passed(make, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        make()


@pytest.mark.parametrize("make,name", [
    (lambda: kd.Relational(distance_weight="1"), "distance_weight"),
    (lambda: kd.HintLoss(3.0, 5), "student_channels"),
    (lambda: kd.kd_loss(logits(0), logits(1), 2.0, alpha=True), "alpha"),
])
def test_arguments_of_the_wrong_kind_raise_type_error(make, name):
    with pytest.raises(TypeError, match=rf"^{name} must"):
        make()


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval_is_rejected(alpha):
    with pytest.raises(ValueError, match="alpha"):
        kd.kd_loss(logits(0), logits(1), 2.0, alpha=alpha, targets=torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha"):
        kd.KD(2.0, alpha=alpha)


def test_mismatched_shapes_and_missing_targets_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        kd.kd_loss(logits(0, (8, 10)), logits(1, (8, 9)), 2.0)
    with pytest.raises(ValueError, match="same shape"):
        kd.logit_matching_loss(logits(0, (8, 10)), logits(1, (7, 10)))
    with pytest.raises(ValueError, match="2-d"):
        kd.kd_loss(logits(0, (8, 10, 1)), logits(1, (8, 10, 1)), 2.0)
    with pytest.raises(ValueError, match="targets"):
        kd.kd_loss(logits(0), logits(1), 2.0, alpha=0.5)
    with pytest.raises(ValueError, match="targets"):
        kd.kd_loss(logits(0), logits(1), 2.0, alpha=0.5, targets=torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------- features

def feature_maps(seed, shape=(4, 6, 5, 5)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_attention_maps_are_unit_normalized_channel_sums():
    a = feature_maps(0)
    q = kd.attention_map(a)
    assert q.shape == (4, 25)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(4, dtype=torch.float64))
    raw = a.pow(2).sum(1).flatten(1)
    torch.testing.assert_close(q, raw / raw.norm(dim=1, keepdim=True))
    assert kd.attention_map(torch.zeros(2, 3, 4, 4)).abs().sum() == 0  # zeros stay finite


def test_attention_transfer_compares_maps_across_channel_counts():
    s, t = feature_maps(1, (4, 3, 5, 5)), feature_maps(2, (4, 8, 5, 5))
    want = (kd.attention_map(s) - kd.attention_map(t)).pow(2).sum(1).mean()
    assert kd.attention_transfer_loss(s, t).item() == pytest.approx(want.item())
    assert kd.attention_transfer_loss(t, 3 * t).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="spatial"):
        kd.attention_transfer_loss(s, feature_maps(3, (4, 8, 4, 4)))
    with pytest.raises(ValueError, match="4-d"):
        kd.attention_map(torch.zeros(4, 25))
    with pytest.raises(ValueError, match="p must"):
        kd.attention_map(s, p=0)


def test_attention_term_equals_sum_of_pairwise_losses():
    s1, s2, t1, t2 = feature_maps(4), feature_maps(5, (4, 2, 3, 3)), feature_maps(6), feature_maps(7, (4, 9, 3, 3))
    term = kd.Attention([("a", "x"), ("b", "y")], weight=0.5)
    signal = term.signal(kd.Outputs(torch.zeros(4, 10), {"x": t1, "y": t2}))
    got = term(kd.Outputs(torch.zeros(4, 10), {"a": s1, "b": s2}), signal, None)
    want = 0.5 * (kd.attention_transfer_loss(s1, t1) + kd.attention_transfer_loss(s2, t2))
    assert got.item() == pytest.approx(want.item())


def random_rotation(dim, seed):
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_relational_losses_are_invariant_to_scale_and_rotation():
    s, t = logits(20, (12, 6)), logits(21, (12, 16))
    dist, angle = kd.rkd_distance_loss(s, t).item(), kd.rkd_angle_loss(s, t).item()
    assert dist > 0 and angle > 0
    for moved in (7.5 * s, s @ random_rotation(6, 0), 0.2 * s @ random_rotation(6, 1) + 3.0):
        assert kd.rkd_distance_loss(moved, t).item() == pytest.approx(dist, rel=1e-9)
        assert kd.rkd_angle_loss(moved, t).item() == pytest.approx(angle, rel=1e-9)
    same = 4.0 * t @ random_rotation(16, 2)  # the teacher's own geometry: zero loss
    assert kd.rkd_distance_loss(same, t).item() == pytest.approx(0.0, abs=1e-12)
    assert kd.rkd_angle_loss(same, t).item() == pytest.approx(0.0, abs=1e-12)


def test_relational_losses_match_explicit_triplet_loops():
    s, t = logits(22, (5, 3)), logits(23, (5, 4))

    def cosines(e):
        out = []
        for i in range(5):
            for j in range(5):
                for k in range(5):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = u.norm(), v.norm()
                    out.append(0.0 if nu == 0 or nv == 0 else (u @ v / (nu * nv)).item())
        return torch.tensor(out, dtype=torch.float64)

    want = nn.functional.smooth_l1_loss(cosines(s), cosines(t))
    assert kd.rkd_angle_loss(s, t).item() == pytest.approx(want.item(), rel=1e-9)
    with pytest.raises(ValueError, match="batch"):
        kd.rkd_angle_loss(logits(0, (2, 3)), logits(1, (2, 3)))
    with pytest.raises(ValueError, match="batch"):
        kd.rkd_distance_loss(logits(0, (4, 3)), logits(1, (5, 3)))


def test_hint_loss_regresses_student_features_to_the_teachers():
    hint = kd.HintLoss(3, 5).double()
    s, t = feature_maps(30, (2, 3, 4, 4)), feature_maps(31, (2, 5, 4, 4))
    want = 0.5 * (hint.regressor(s) - t).pow(2).mean()
    assert hint(s, t).item() == pytest.approx(want.item())
    linear = kd.HintLoss(3, 5, spatial=False)
    assert isinstance(linear.regressor, nn.Linear)
    with pytest.raises(ValueError, match="must match"):
        hint(s, feature_maps(32, (2, 5, 3, 3)))
    with pytest.raises(ValueError, match="4-d"):
        hint(torch.zeros(2, 3), t)
    with pytest.raises(ValueError, match="student_channels"):
        kd.HintLoss(0, 5)


def test_term_weights_must_be_non_negative():
    with pytest.raises(ValueError, match="weight"):
        kd.CrossEntropy(weight=-1.0)
    with pytest.raises(ValueError, match="pairs"):
        kd.Attention([])


# --------------------------------------------------------------------------- hooks

def test_capture_features_records_and_always_removes_hooks():
    model = LeNet5((2, 3), hidden=8)
    x = torch.randn(4, 1, 28, 28)
    with capture_features(model, ["conv1", "fc1"]) as out:
        model(x)
        assert out["conv1"].shape == (4, 2, 24, 24) and out["fc1"].shape == (4, 8)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with capture_features(model, ["conv2"], kind="input") as out:
            model(x)
            assert out["conv2"].shape == (4, 2, 12, 12)
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_capture_features_rejects_unknown_layers_and_kinds():
    model = LeNet5((2, 3), hidden=8)
    with pytest.raises(ValueError, match="conv9"):
        with capture_features(model, ["conv9"]):
            pass
    with pytest.raises(ValueError, match="kind"):
        with capture_features(model, ["conv1"], kind="grad"):
            pass
    with pytest.raises(TypeError, match="sequence"):
        with capture_features(model, "conv1"):
            pass
    assert all(not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------- the loop

def tiny_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


RECIPE = Recipe(epochs=2, lr=0.05, batch_size=32)


def test_distill_with_cross_entropy_only_is_plain_training():
    x, y = tiny_data()
    a, b = MLP((16,)), MLP((16,))
    b.load_state_dict(a.state_dict())
    kd.distill(a, None, x, y, RECIPE, [kd.CrossEntropy()], seed=3)
    fit(b, x, y, RECIPE, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_distill_with_cached_teacher_equals_the_teacher_run_at_every_step():
    x, y = tiny_data()
    teacher = MLP((32,), dropout=0.5)  # eval mode must switch its dropout off
    a = MLP((16,))
    b = copy.deepcopy(a)
    kd.distill(a, teacher, x, y, RECIPE, [kd.KD(4.0, alpha=0.7)], seed=1)

    def loss_fn(model, xb, yb):
        with torch.no_grad():
            t = teacher.eval()(xb)
        return kd.kd_loss(model(xb), t, 4.0, 0.7, yb)

    fit(b, x, y, RECIPE, seed=1, loss_fn=loss_fn)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    assert not a.training


def test_distill_with_jitter_runs_the_teacher_on_each_batch_and_trains_hint_regressors():
    x, y = tiny_data()
    teacher, student = LeNet5((4, 6), hidden=16), LeNet5((2, 3), hidden=8)
    hint = kd.Hint("conv2", "conv2", 3, 6)
    before = hint.hint.regressor.weight.detach().clone()
    teacher_before = copy.deepcopy(teacher.state_dict())
    terms = [hint, kd.Attention([("conv1", "conv1")], weight=10.0), kd.Relational("fc1", "fc1"), kd.KD(2.0)]
    losses = kd.distill(student, teacher, x, y, Recipe(epochs=2, lr=0.01, batch_size=32, jitter=1), terms)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert not torch.equal(before, hint.hint.regressor.weight)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])


def test_teacher_signals_are_the_per_batch_signals_concatenated():
    x, _ = tiny_data(50)
    teacher = LeNet5((4, 6), hidden=16)
    terms = [kd.KD(2.0), kd.Attention([("conv1", "conv1"), ("conv2", "conv2")]), kd.CrossEntropy()]
    logits_, maps, none = kd.teacher_signals(teacher, terms, x, batch_size=16)
    assert none is None
    torch.testing.assert_close(logits_, teacher(x))
    with capture_features(teacher, ["conv1", "conv2"]) as f:
        teacher(x)
        want = torch.cat([kd.attention_map(f["conv1"]), kd.attention_map(f["conv2"])], 1)
    torch.testing.assert_close(maps, want)


def test_precomputed_signals_give_the_same_student():
    x, y = tiny_data()
    teacher, a = MLP((32,)), MLP((16,))
    b = copy.deepcopy(a)
    terms = [kd.KD(3.0, alpha=0.5)]
    kd.distill(a, teacher, x, y, RECIPE, terms, seed=2)
    kd.distill(b, None, x, y, RECIPE, terms, seed=2, signals=kd.teacher_signals(teacher, terms, x))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="signals"):
        kd.distill(b, None, x, y, RECIPE, terms, signals=[torch.zeros(5, 10)])
    with pytest.raises(ValueError, match="signals"):
        kd.distill(b, None, x, y, Recipe(epochs=1, lr=0.1, jitter=1), terms, signals=[torch.zeros(96, 10)])


def test_distill_rejects_bad_arguments():
    x, y = tiny_data(10)
    student = MLP((4,))
    with pytest.raises(ValueError, match="need a teacher"):
        kd.distill(student, None, x, y, RECIPE, [kd.KD(2.0)])
    with pytest.raises(ValueError, match="at least one"):
        kd.distill(student, MLP((4,)), x, y, RECIPE, [])
    with pytest.raises(TypeError, match="Term"):
        kd.distill(student, MLP((4,)), x, y, RECIPE, [nn.MSELoss()])
    with pytest.raises(TypeError, match="student"):
        kd.distill("model", MLP((4,)), x, y, RECIPE, [kd.KD(2.0)])
    with pytest.raises(ValueError, match="equal length"):
        kd.distill(student, MLP((4,)), x, y[:5], RECIPE, [kd.KD(2.0)])
