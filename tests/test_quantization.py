"""nncompress.quantization on tensors: against torch's fake-quantize and torch.ao's observers, and
the math's guarantees. Model-level tests are in test_quantization_models.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from nncompress import quantization as Q

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=60)


# --------------------------------------------------------------------------- tensors

@pytest.mark.parametrize("bits,signed", [(8, False), (8, True), (4, True), (3, False), (2, True), (1, False), (16, False)])
def test_fake_quantize_per_tensor_equals_torch(bits, signed):
    x = torch.randn(50, 40, generator=torch.Generator().manual_seed(bits)) * 3
    scale, zero_point = Q.qparams(x.min() * 0.8, x.max() * 0.8, bits, signed=signed)  # some values clip
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), *Q.qrange(bits, signed))
    assert torch.equal(Q.fake_quantize(x, scale, zero_point, bits, signed), ref)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("bits,symmetric", [(8, True), (8, False), (4, True), (2, False)])
def test_fake_quantize_per_channel_equals_torch(axis, bits, symmetric):
    x = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(axis + 7)) * 2
    scale, zero_point = Q.qparams(*Q.minmax_range(x, axis), bits, symmetric)
    qmin, qmax = Q.qrange(bits, symmetric)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis % 3, qmin, qmax)
    assert torch.equal(Q.fake_quantize(x, scale, zero_point, bits, symmetric, axis), ref)


def test_quantize_dequantize_compose_to_fake_quantize():
    x = torch.randn(100) * 4
    scale, zero_point = Q.qparams(-3.0, 5.0, 4)
    codes = Q.quantize(x, scale, zero_point, 4)
    assert codes.min() >= 0 and codes.max() <= 15
    assert torch.equal(Q.dequantize(codes, scale, zero_point), Q.fake_quantize(x, scale, zero_point, 4))


@DETERMINISTIC
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), bits=st.integers(2, 12),
       lo=st.floats(-100, 0, allow_subnormal=False), width=st.floats(1e-3, 200), symmetric=st.booleans(),
       seed=st.integers(0, 2**16))
def test_round_trip_error_at_most_half_a_step_inside_the_range(shape, bits, lo, width, symmetric, seed):
    scale, zero_point = Q.qparams(lo, lo + width, bits, symmetric)
    qmin, qmax = Q.qrange(bits, symmetric)
    low, high = (qmin - float(zero_point)) * float(scale), (qmax - float(zero_point)) * float(scale)
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = (low + (high - low) * u).float().clamp(low, high)
    err = (Q.fake_quantize(x, scale, zero_point, bits, symmetric) - x).abs()
    assert float(err.max()) <= float(scale) / 2 * (1 + 1e-4) + 1e-6 * abs(high)


def test_range_includes_zero_exactly():
    scale, zero_point = Q.qparams(0.5, 3.0, 8)  # widened to [0, 3]
    assert int(zero_point) == 0
    assert float(Q.fake_quantize(torch.zeros(3), scale, zero_point)[0]) == 0.0
    scale, zero_point = Q.qparams(-7.3, -1.0, 8)
    assert float(Q.fake_quantize(torch.zeros(1), scale, zero_point)) == 0.0


def test_straight_through_gradient_is_one_inside_zero_outside():
    scale, zero_point = torch.tensor(0.1), torch.tensor(10, dtype=torch.int32)  # range [-1.0, 24.5]
    x = torch.tensor([-3.0, -1.04, -0.9, 0.0, 12.0, 24.4, 24.6, 40.0], requires_grad=True)
    Q.fake_quantize(x, scale, zero_point, 8).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    y = x.detach().clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(y, 0.1, 10, 0, 255).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_learned_scale_gradient_matches_torch_learnable_fake_quantize():
    x = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 2
    scale = torch.tensor([0.05], requires_grad=True)
    Q.fake_quantize(x, scale, 0, 4, True).sum().backward()
    ref_scale = torch.tensor([0.05], requires_grad=True)
    out = torch._fake_quantize_learnable_per_tensor_affine(x, ref_scale, torch.tensor([0.0]), -8, 7, 1.0)
    out.sum().backward()
    assert torch.allclose(scale.grad, ref_scale.grad, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=0), "bits"), (dict(bits=17), "bits"),
    (dict(scale=0.0), "scale"), (dict(scale=-1.0), "scale"), (dict(scale=float("nan")), "scale"),
    (dict(zero_point=256), "zero_point"), (dict(zero_point=-1), "zero_point"), (dict(zero_point=1.5), "zero_point"),
    (dict(axis=2), "axis"), (dict(axis=-3), "axis"),
    (dict(axis=0, scale=torch.ones(4)), "scale"), (dict(axis=1, zero_point=torch.zeros(2, dtype=torch.int32)), "zero_point"),
])
def test_bad_input_raises_naming_the_argument(kwargs, match):
    args = dict(scale=0.1, zero_point=0, bits=8, signed=False, axis=None) | kwargs
    with pytest.raises(ValueError, match=match):
        Q.fake_quantize(torch.randn(3, 5), **args)


def test_a_non_integer_bit_width_is_a_type_error():
    with pytest.raises(TypeError, match="bits"):
        Q.fake_quantize(torch.randn(3), 0.1, 0, bits=4.0)


@pytest.mark.parametrize("lo,hi,match", [
    (2.0, 1.0, "lo must not exceed hi"),  # both above 0: widening to [0, 2] would hide it
    (-1.0, -2.0, "lo must not exceed hi"),  # both below 0
    (torch.tensor([0.0, 3.0]), torch.tensor([1.0, 2.0]), "lo must not exceed hi"),  # one channel
    (float("nan"), 1.0, "lo"), (0.0, float("nan"), "hi"),
    (float("-inf"), 1.0, "lo"), (0.0, float("inf"), "hi"),
])
def test_qparams_refuses_bad_ranges_before_widening_them(lo, hi, match):
    with pytest.raises(ValueError, match=match):
        Q.qparams(lo, hi, 8)


@pytest.mark.parametrize("call", [
    lambda x: Q.minmax_range(x), lambda x: Q.minmax_range(x, axis=0), lambda x: Q.percentile_range(x),
    lambda x: Q.mse_range(x), lambda x: Q.calibrated_range(x, "mse"), lambda x: Q.Observer()(x),
])
def test_ranges_and_observers_refuse_an_empty_tensor(call):
    with pytest.raises(ValueError, match="x must not be empty"):
        call(torch.empty(0, 4))


@pytest.mark.parametrize("dtype,qscheme", [
    (torch.quint8, torch.per_tensor_affine), (torch.qint8, torch.per_tensor_affine),
    (torch.qint8, torch.per_tensor_symmetric), (torch.quint8, torch.per_tensor_symmetric),
])
def test_qparams_per_tensor_equal_torch_minmax_observer(dtype, qscheme):
    for seed, shift in ((0, 0.0), (1, 3.0), (2, -3.0)):  # straddling zero, all positive, all negative
        x = torch.randn(200, generator=torch.Generator().manual_seed(seed)) + shift
        observer = MinMaxObserver(dtype=dtype, qscheme=qscheme)
        observer(x)
        ref_scale, ref_zero_point = observer.calculate_qparams()
        symmetric = qscheme == torch.per_tensor_symmetric
        scale, zero_point = Q.qparams(x.min(), x.max(), 8, symmetric, signed=dtype == torch.qint8)
        torch.testing.assert_close(scale.reshape(1), ref_scale, rtol=1e-6, atol=0)
        assert int(zero_point) == int(ref_zero_point)


@pytest.mark.parametrize("dtype,qscheme", [
    (torch.qint8, torch.per_channel_symmetric), (torch.quint8, torch.per_channel_affine),
    (torch.qint8, torch.per_channel_affine),
])
def test_qparams_per_channel_equal_torch_per_channel_observer(dtype, qscheme):
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(4)) * torch.arange(1.0, 7.0)[:, None]
    x[1] += 10.0  # one channel entirely positive
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=dtype, qscheme=qscheme)
    observer(x)
    ref_scale, ref_zero_point = observer.calculate_qparams()
    symmetric = qscheme == torch.per_channel_symmetric
    scale, zero_point = Q.qparams(*Q.minmax_range(x, axis=0), 8, symmetric, signed=dtype == torch.qint8)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-6, atol=0)
    assert torch.equal(zero_point.long(), ref_zero_point.long())


def test_bad_calibration_arguments():
    with pytest.raises(ValueError, match="percentile"):
        Q.percentile_range(torch.randn(10), 30.0)
    with pytest.raises(ValueError, match="method"):
        Q.calibrated_range(torch.randn(10), "entropy")
    with pytest.raises(ValueError, match="grid"):
        Q.mse_range(torch.randn(10), grid=0)
    with pytest.raises(ValueError, match="multiplier"):
        Q.fixed_point_multiplier(1.5)
    observer = Q.Observer()
    observer(torch.randn(5, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="method"):
        observer.range("kl")
    with pytest.raises(RuntimeError, match="no data"):
        Q.Observer().range()


def test_calibrators_per_channel():
    x = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0)) * torch.tensor([[1.0], [2], [3], [4]])
    lo, hi = Q.minmax_range(x, axis=0)
    assert torch.equal(hi, x.amax(1)) and torch.equal(lo, x.amin(1))
    plo, phi = Q.percentile_range(x, 99.0, axis=0)
    assert torch.allclose(phi, torch.quantile(x, 0.99, dim=1)) and (phi < hi).all()


def test_mse_range_is_no_worse_than_minmax_and_clips_outliers():
    x = torch.cat([torch.randn(5000, generator=torch.Generator().manual_seed(1)), torch.tensor([40.0])])

    def mse(lo, hi):
        s, z = Q.qparams(lo, hi, 4)
        return float((Q.fake_quantize(x, s, z, 4) - x).pow(2).mean())

    lo, hi = Q.mse_range(x, bits=4)
    assert hi < 40.0 and mse(lo, hi) < mse(*Q.minmax_range(x))


def test_binarize_and_ternarize():
    w = torch.randn(8, 20, generator=torch.Generator().manual_seed(2))
    b = Q.binarize(w)
    alpha = w.abs().mean(1, keepdim=True)
    assert torch.allclose(b.abs(), alpha.expand_as(b)) and torch.equal(torch.sign(b), torch.where(w >= 0, 1.0, -1.0))
    # alpha = mean|w| minimises ||w - alpha sign(w)||^2 over alpha
    for factor in (0.9, 1.1):
        assert (w - b).pow(2).sum() < (w - factor * b).pow(2).sum()
    t = Q.ternarize(w)
    assert set(torch.unique(torch.sign(t)).tolist()) <= {-1.0, 0.0, 1.0}
    delta = 0.7 * w.abs().mean(1, keepdim=True)
    assert torch.equal(t != 0, w.abs() > delta)
    w.requires_grad_()
    Q.binarize(w * 3).sum().backward()  # gradient passes only where |3w| <= 1
    assert torch.equal(w.grad != 0, (w.detach() * 3).abs() <= 1)


# --------------------------------------------------------------------------- integer arithmetic

@DETERMINISTIC
@given(m=st.floats(1e-6, 0.999999, exclude_max=True))
def test_fixed_point_multiplier_represents_the_real_multiplier(m):
    m0, shift = Q.fixed_point_multiplier(m)
    assert (1 << 30) <= int(m0) < (1 << 31)
    assert abs(int(m0) * 2.0 ** (-31 - int(shift)) - m) <= m * 2.0 ** -30


@DETERMINISTIC
@given(seed=st.integers(0, 2**16), m=st.floats(1e-4, 0.9), zero_point=st.integers(0, 255))
def test_requantize_rounds_to_nearest(seed, m, zero_point):
    acc = torch.randint(-(1 << 20), 1 << 20, (200,), generator=torch.Generator().manual_seed(seed))
    m0, shift = Q.fixed_point_multiplier(m)
    out = Q.requantize(acc, m0, shift, zero_point, 0, 255)
    exact = (acc.double() * (int(m0) * 2.0 ** (-31 - int(shift)))).round() + zero_point
    assert (out.double() - exact.clamp(0, 255)).abs().max() <= 1
