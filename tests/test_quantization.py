"""nncompress.quantization against torch's fake-quantize and int8 kernels, and the math's guarantees."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nncompress import measure, models, train
from nncompress import quantization as Q

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=60)


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


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
    (dict(bits=0), "bits"), (dict(bits=17), "bits"), (dict(bits=4.0), "bits"),
    (dict(scale=0.0), "scale"), (dict(scale=-1.0), "scale"), (dict(scale=float("nan")), "scale"),
    (dict(zero_point=256), "zero_point"), (dict(zero_point=-1), "zero_point"), (dict(zero_point=1.5), "zero_point"),
    (dict(axis=2), "axis"), (dict(axis=-3), "axis"),
    (dict(axis=0, scale=torch.ones(4)), "scale"), (dict(axis=1, zero_point=torch.zeros(2, dtype=torch.int32)), "zero_point"),
])
def test_bad_input_raises_naming_the_argument(kwargs, match):
    args = dict(scale=0.1, zero_point=0, bits=8, signed=False, axis=None) | kwargs
    with pytest.raises(ValueError, match=match):
        Q.fake_quantize(torch.randn(3, 5), **args)


def test_bad_calibration_arguments():
    with pytest.raises(ValueError, match="percentile"):
        Q.percentile_range(torch.randn(10), 30.0)
    with pytest.raises(ValueError, match="method"):
        Q.calibrated_range(torch.randn(10), "entropy")
    with pytest.raises(ValueError, match="grid"):
        Q.mse_range(torch.randn(10), grid=0)
    with pytest.raises(ValueError, match="multiplier"):
        Q.fixed_point_multiplier(1.5)


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


# --------------------------------------------------------------------------- models

def test_as_sequential_matches_the_models():
    x, _ = _data(64)
    for model in (models.lenet_300_100(), models.lenet5(), models.hinton_teacher().eval()):
        seq = Q.as_sequential(model.eval())
        assert torch.equal(seq(x), model(x))
        assert set(model.state_dict()) == set(seq.state_dict())
    with pytest.raises(TypeError, match="model"):
        Q.as_sequential(nn.Linear(3, 3))


def test_as_sequential_keeps_conv_relus_and_expands_factorized_layers():
    from nncompress import lowrank

    x, _ = _data(32)
    torch.manual_seed(0)
    thin = models.LeNet5((5, 10), 50, conv_relu=True).eval()
    assert torch.equal(Q.as_sequential(thin)(x), thin(x))
    base = models.lenet5().eval()
    factored = lowrank.decompose_convs(lowrank.factorize(base, {"fc1": 20}), "tucker2", {"conv2": (10, 5)}).eval()
    seq = Q.as_sequential(factored)
    assert {"fc1_down", "fc1_up", "conv2_0", "conv2_1", "conv2_2"} <= set(dict(seq.named_children()))
    assert torch.allclose(seq(x), factored(x), atol=1e-5)
    # and the expanded form quantizes to int8 like any other network
    int8 = Q.to_int8(Q.post_training_quantize(factored, x))
    assert (int8(x).argmax(1) == factored(x).argmax(1)).float().mean() > 0.9


def test_apply_fake_quant_then_calibrate():
    torch.manual_seed(0)
    model = models.lenet_300_100().eval()
    x, _ = _data(300)
    fq = Q.apply_fake_quant(model, weight_bits=4, activation_bits=8)
    flat = x.flatten(1)
    assert torch.equal(fq.fc1_input(flat), flat)  # observing only: activations untouched ...
    assert not torch.equal(model.fc1.weight, fq.fc1.weight)  # ... but weights are on the 4-bit grid
    assert len(torch.unique(fq.fc1.weight[0])) <= 16
    Q.calibrate(fq, x)
    acts = [m for m in fq.modules() if isinstance(m, Q.ActFakeQuant)]
    assert len(acts) == 4 and all(bool(a.enabled) for a in acts)
    # each quantization point holds at most 256 levels
    h = fq.fc2_input(torch.relu(fq.fc1(fq.fc1_input(x.flatten(1)))))
    assert len(torch.unique(h)) <= 256
    with pytest.raises(ValueError, match="method"):
        Q.calibrate(fq, x, method="kl")


def test_bake_keeps_outputs_and_packed_bytes_match_bits():
    model = models.lenet_300_100().eval()
    x, _ = _data(100)
    for bits in (8, 4, 2):
        fq = Q.apply_fake_quant(model, bits, None)
        weights = sum(w.numel() for n, w in model.named_parameters() if n.endswith("weight"))
        before = fq(x)
        payload = weights * bits / 8
        assert payload < Q.packed_bytes(fq) < payload + 12_000  # codes + scales, biases, pickle framing
        Q.bake(fq)
        assert torch.equal(fq(x), before) and not Q.weight_quantizers(fq)
    with pytest.raises(ValueError, match="quantized"):
        Q.packed_bytes(fq)


def test_qat_trains_weights_and_learned_scales():
    model = models.lenet_300_100().eval()
    x, y = _data(512)
    fq = Q.apply_fake_quant(model, 2, 2, learn_scale=True)
    Q.calibrate(fq, x[:128])
    scale0 = fq.fc1.parametrizations.weight[0].scale.detach().clone()
    losses = train.fit(fq, x, y, train.Recipe(epochs=3, lr=0.05, batch_size=64), seed=0)
    assert losses[-1] < losses[0]
    assert not torch.equal(scale0, fq.fc1.parametrizations.weight[0].scale)
    assert (fq.fc1.parametrizations.weight[0].scale > 0).all()


def test_apply_binary_packs_one_bit_per_weight():
    model = models.lenet_300_100().eval()
    b = Q.apply_binary(model)
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(b, name).weight
        assert (w.abs() == w.abs().amax(1, keepdim=True)).all()  # one magnitude per row
    weights = sum(w.numel() for n, w in model.named_parameters() if n.endswith("weight"))
    assert weights / 8 < Q.packed_bytes(b) < weights / 8 + 12_000
    t = Q.apply_binary(model, ternary=True)
    assert weights / 4 < Q.packed_bytes(t) < weights / 4 + 12_000


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


def _calibrated_fq(model, n=512):
    x, _ = _data(n)
    fq = Q.apply_fake_quant(model.eval(), 8, 8)
    return Q.calibrate(fq, x), x


def test_integer_linear_matches_fake_quant_within_one_lsb():
    torch.manual_seed(0)
    fq, x = _calibrated_fq(models.lenet_300_100())
    a_in, a_out = fq.fc1_input, fq.fc2_input
    layer = Q.IntegerLinear(_plain_linear(fq.fc1), float(a_in.scale), int(a_in.zero_point), float(a_out.scale),
                            int(a_out.zero_point), relu=True, weight_scale=fq.fc1.parametrizations.weight[0].scale)
    flat = x.flatten(1)
    q_in = Q.quantize(flat, a_in.scale, a_in.zero_point).to(torch.uint8)
    q_out = layer(q_in)
    assert q_out.dtype == torch.uint8
    with torch.no_grad():
        simulated = a_out(torch.relu(fq.fc1(a_in(flat))))
    q_sim = Q.quantize(simulated, a_out.scale, a_out.zero_point)
    assert (q_out.long() - q_sim).abs().max() <= 1
    assert (q_out.long() == q_sim).float().mean() > 0.99
    with pytest.raises(TypeError, match="uint8"):
        layer(q_in.float())


def _plain_linear(layer):
    plain = nn.Linear(layer.in_features, layer.out_features)
    plain.load_state_dict({"weight": layer.parametrizations.weight.original, "bias": layer.bias})
    return plain


@pytest.mark.parametrize("make", [models.lenet_300_100, models.lenet5])
def test_int8_engine_matches_fake_quant(make):
    torch.manual_seed(0)
    fq, x = _calibrated_fq(make())
    int8 = Q.to_int8(fq)
    with torch.no_grad():
        simulated, real = fq(x), int8(x)
    step = float(fq.output.scale)
    steps = (simulated - real).abs() / step
    assert steps.max() <= 3.01  # one-step differences inside the kernels can add up over layers
    assert (steps < 0.01).float().mean() > 0.98  # but almost every output is identical
    assert (simulated.argmax(1) == real.argmax(1)).float().mean() > 0.98
    assert measure.count_params(int8) == measure.count_params(make())
    assert measure.count_flops(int8) == measure.count_flops(make())
    assert measure.serialized_bytes(int8) < measure.serialized_bytes(make()) / 3.5


def test_to_int8_rejects_uncalibrated_or_low_bit_models():
    model = models.lenet_300_100().eval()
    with pytest.raises(ValueError, match="calibrate"):
        Q.to_int8(Q.apply_fake_quant(model, 8, 8))
    x, _ = _data(64)
    with pytest.raises(ValueError, match="8-bit"):
        Q.to_int8(Q.calibrate(Q.apply_fake_quant(model, 4, 8), x))
    with pytest.raises(ValueError, match="engine"):
        Q.to_int8(Q.calibrate(Q.apply_fake_quant(model, 8, 8), x), engine="tpu")


def test_fake_quant_model_survives_deepcopy_and_state_dict():
    fq, x = _calibrated_fq(models.lenet_300_100())
    clone = copy.deepcopy(fq)
    assert torch.equal(clone(x), fq(x))
    fresh = Q.apply_fake_quant(models.lenet_300_100().eval(), 8, 8)
    Q.calibrate(fresh, x[:10])
    fresh.load_state_dict(fq.state_dict())
    assert torch.equal(fresh(x), fq(x))


def test_a_learned_scale_driven_negative_zeroes_its_channel_consistently():
    fq = Q.apply_fake_quant(models.lenet_300_100().eval(), 4, None, learn_scale=True)
    quant = fq.fc1.parametrizations.weight[0]
    with torch.no_grad():
        quant.scale[0] = -0.01
    assert fq.fc1.weight[0].abs().max() < 1e-5 and fq.fc1.weight[1].abs().max() > 1e-3
    assert Q.packed_bytes(fq) > 0  # codes use the same effective scale as the forward pass
