"""nncompress.quantization on models: any model keeps its class, copies are independent, the
packed form stores what the forward pass uses, and the int8 kernels compute what was simulated."""

import copy

import pytest
import torch
from torch import nn

from nncompress import measure, models, parametrizations, pruning, train
from nncompress import quantization as Q
from nncompress.coding import unpack_bits


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return models.lenet_300_100().eval()


def _calibrated_fq(model, n=512, **kwargs):
    x, _ = _data(n)
    return Q.post_training_quantize(model.eval(), x, 8, 8, **kwargs), x


def _weights(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def test_apply_fake_quant_returns_a_new_model_of_the_same_class():
    model, x = _mlp(), _data(300)[0]
    before = copy.deepcopy(model.state_dict())
    fq = Q.apply_fake_quant(model, weight_bits=4, activation_bits=8)
    assert type(fq) is type(model) and not Q.weight_quantizers(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert "fc1.weight" in dict(fq.named_parameters()) or "fc1.parametrizations.weight.original" in fq.state_dict()
    assert "input_quant" in repr(fq.fc1) and "output_quant" in repr(fq.fc3) and "output_quant" not in repr(fq.fc2)
    assert torch.equal(fq(x), nn.functional.linear(torch.relu(fq.fc2(torch.relu(fq.fc1(x.flatten(1))))),
                                                   fq.fc3.weight, fq.fc3.bias))  # observing: activations untouched
    assert not torch.equal(model.fc1.weight, fq.fc1.weight) and len(torch.unique(fq.fc1.weight[0])) <= 16
    calibrated = Q.calibrate(fq, x)
    assert not any(bool(a.enabled) for a in Q.activation_quantizers(fq).values())  # calibrate copies
    acts = Q.activation_quantizers(calibrated)
    assert list(acts) == ["fc1.input_quant", "fc2.input_quant", "fc3.input_quant", "fc3.output_quant"]
    assert all(bool(a.enabled) for a in acts.values())
    with torch.no_grad():
        h = calibrated.fc2.input_quant(torch.relu(calibrated.fc1(x.flatten(1))))
    assert len(torch.unique(h)) <= 256  # each quantization point holds at most 256 levels
    with pytest.raises(ValueError, match="method"):
        Q.calibrate(fq, x, method="kl")


def test_quantized_model_computes_the_sequential_form_exactly():
    """The hooks quantize where the Sequential of the previous design had its modules: same numbers."""
    x = _data(200)[0]
    for model in (_mlp(), models.lenet5().eval()):
        native = Q.post_training_quantize(model, x[:100], 4, 8)
        chain = Q.post_training_quantize(models.as_sequential(model), x[:100], 4, 8)
        with torch.no_grad():
            assert torch.equal(native(x), chain(x))


def test_layers_and_outputs_select_the_quantization_points():
    model, x = _mlp(), _data(64)[0]
    fq = Q.post_training_quantize(model, x, 8, 8, layers="fc[12]", outputs=["fc1", "fc2"])
    assert sorted(Q.weight_quantizers(fq)) == ["fc1", "fc2"]
    assert list(Q.activation_quantizers(fq)) == ["fc1.input_quant", "fc1.output_quant", "fc2.input_quant",
                                                 "fc2.output_quant"]
    with pytest.raises(ValueError, match="outputs"):
        Q.apply_fake_quant(model, layers="fc1", outputs="fc3")
    with pytest.raises(ValueError, match="already quantized"):
        Q.apply_fake_quant(fq)
    with pytest.raises(ValueError, match="fc9"):
        Q.apply_fake_quant(model, layers="fc9")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(weight_bits=0), ValueError, "weight_bits"), (dict(weight_bits=2.5), TypeError, "weight_bits"),
    (dict(activation_bits=17), ValueError, "activation_bits"), (dict(weight_method="kl"), ValueError, "weight_method"),
    (dict(percentile=20.0), ValueError, "percentile"),
])
def test_apply_fake_quant_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Q.apply_fake_quant(_mlp(), **kwargs)


def test_calibration_bad_inputs_name_the_argument():
    fq = Q.apply_fake_quant(_mlp())
    with pytest.raises(ValueError, match="inputs must not be empty"):
        Q.calibrate(fq, torch.empty(0, 1, 28, 28))
    with pytest.raises(TypeError, match="inputs"):
        Q.post_training_quantize(_mlp(), [[0.0]])
    with pytest.raises(ValueError, match="batch_size"):
        Q.calibrate(fq, _data(8)[0], batch_size=0)


def test_deepcopy_maps_every_hook_to_the_copys_own_quantizer():
    fq, x = _calibrated_fq(_mlp())
    clone = copy.deepcopy(fq)
    hooks = list(clone.fc1._forward_pre_hooks.values()) + list(clone.fc3._forward_hooks.values())
    assert [h.__self__ for h in hooks] == [clone.fc1.input_quant, clone.fc3.output_quant]
    with torch.no_grad():
        expected = fq(x)
        clone.fc1.input_quant.scale.mul_(4)  # a change to the copy ...
        assert not torch.equal(clone(x), expected)
        assert torch.equal(fq(x), expected)  # ... leaves the original alone
    fresh = Q.apply_fake_quant(_mlp(), 8, 8)
    fresh.load_state_dict(fq.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def test_baking_a_copy_leaves_the_quantized_original_working():
    fq, x = _calibrated_fq(_mlp())
    with torch.no_grad():
        expected = fq(x)
        baked = parametrizations.bake(fq)
        assert not Q.weight_quantizers(baked) and Q.weight_quantizers(fq)
        assert torch.equal(baked(x), expected) and torch.equal(fq(x), expected)
    pruned = pruning.prune_magnitude(_mlp(), 0.8)
    quantized = Q.post_training_quantize(pruned, x, 4, 8)
    with torch.no_grad():
        expected = quantized(x)
        baked = parametrizations.bake(quantized)
        assert not parametrizations.find(baked)
        assert torch.equal(baked(x), expected) and torch.equal(quantized(x), expected)
        assert torch.equal(pruned(x), pruned(x))  # and the pruned model, two copies back, still runs


def test_bake_keeps_outputs_and_packed_bytes_match_bits():
    model, x = _mlp(), _data(100)[0]
    weights = _weights(model)
    for bits in (8, 4, 2):
        fq = Q.apply_fake_quant(model, bits, None)
        payload = weights * bits / 8
        assert payload < Q.packed_bytes(fq) < payload + 12_000  # codes + scales, biases, pickle framing
        baked = parametrizations.bake(fq)
        assert torch.equal(baked(x), fq(x)) and not Q.weight_quantizers(baked)
    with pytest.raises(ValueError, match="quantized"):
        Q.packed_bytes(baked)


def test_a_pruned_model_packs_its_masked_codes_without_masks():
    model = _mlp()
    pruned = pruning.prune_magnitude(model, 0.9)
    fq = Q.apply_fake_quant(pruned, 4, None)
    state = Q.packed_state(fq)
    assert not any("mask" in k or "original" in k for k in state)
    assert all(not v.is_floating_point() or v.numel() <= 300 for v in state.values())  # no float weight or mask
    assert Q.packed_bytes(fq) < measure.serialized_bytes(model) / 7  # 4 bits of 32, plus scales
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(fq, name)
        codes = unpack_bits(state[f"{name}.codes"], 4, layer.weight.numel()).reshape(layer.weight.shape)
        zero_code = int(state[f"{name}.zero_point"][0]) + 8  # codes are shifted by -qmin = 8
        assert torch.equal(codes == zero_code, layer.weight == 0)  # pruned weights are zero codes
        dequantized = (codes - 8 - state[f"{name}.zero_point"][:, None]) * state[f"{name}.scale"][:, None]
        assert torch.equal(dequantized, layer.weight)  # the codes are exactly the weight used


def test_qat_trains_weights_and_learned_scales():
    model = _mlp()
    x, y = _data(512)
    fq = Q.post_training_quantize(model, x[:128], 2, 2, learn_scale=True)
    scale0 = fq.fc1.parametrizations.weight[0].scale.detach().clone()
    losses = train.fit(fq, x, y, train.Recipe(epochs=3, lr=0.05, batch_size=64), seed=0)
    assert losses[-1] < losses[0]
    assert not torch.equal(scale0, fq.fc1.parametrizations.weight[0].scale)
    assert (fq.fc1.parametrizations.weight[0].scale > 0).all()
    assert isinstance(fq.fc1.input_quant.scale, nn.Parameter)


def test_apply_binary_packs_one_bit_per_weight_and_keeps_the_class():
    model = _mlp()
    b = Q.apply_binary(model)
    assert type(b) is type(model) and not Q.weight_quantizers(model)
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(b, name).weight
        assert (w.abs() == w.abs().amax(1, keepdim=True)).all()  # one magnitude per row
    weights = _weights(model)
    assert weights / 8 < Q.packed_bytes(b) < weights / 8 + 12_000
    t = Q.apply_binary(model, ternary=True, layers=["fc1", "fc2"])
    assert sorted(Q.weight_quantizers(t)) == ["fc1", "fc2"]
    with pytest.raises(ValueError, match="threshold"):
        Q.apply_binary(model, ternary=True, threshold=3.0)


def test_a_learned_scale_driven_negative_zeroes_its_channel_consistently():
    fq = Q.apply_fake_quant(_mlp(), 4, None, learn_scale=True)
    quant = fq.fc1.parametrizations.weight[0]
    with torch.no_grad():
        quant.scale[0] = -0.01
    assert fq.fc1.weight[0].abs().max() < 1e-5 and fq.fc1.weight[1].abs().max() > 1e-3
    assert Q.packed_bytes(fq) > 0  # codes use the same effective scale as the forward pass


# --------------------------------------------------------------------------- integer and int8

def _plain_linear(layer):
    plain = nn.Linear(layer.in_features, layer.out_features)
    plain.load_state_dict({"weight": parametrizations.original(layer, "weight"), "bias": layer.bias})
    return plain


def test_integer_linear_matches_fake_quant_within_one_lsb():
    fq, x = _calibrated_fq(_mlp())
    a_in, a_out = fq.fc1.input_quant, fq.fc2.input_quant
    layer = Q.IntegerLinear(_plain_linear(fq.fc1), float(a_in.scale), int(a_in.zero_point), float(a_out.scale),
                            int(a_out.zero_point), relu=True, weight_scale=fq.fc1.parametrizations.weight[0].scale)
    flat = x.flatten(1)
    q_in = Q.quantize(flat, a_in.scale, a_in.zero_point).to(torch.uint8)
    q_out = layer(q_in)
    assert q_out.dtype == torch.uint8
    with torch.no_grad():
        simulated = a_out(torch.relu(fq.fc1(flat)))  # fc1's hook quantizes its input
    q_sim = Q.quantize(simulated, a_out.scale, a_out.zero_point)
    assert (q_out.long() - q_sim).abs().max() <= 1
    assert (q_out.long() == q_sim).float().mean() > 0.99
    with pytest.raises(TypeError, match="uint8"):
        layer(q_in.float())


# The x86 engine's kernels on CPUs without VNNI add pairs of u8 x s8 products in int16, which
# saturates when inputs fill the 8-bit range (as these Gaussian inputs do): reduce_range, as in
# torch.ao's x86 configuration.

@pytest.mark.parametrize("make", [models.lenet_300_100, models.lenet5])
def test_int8_chain_matches_fake_quant(make):
    torch.manual_seed(0)
    model = make().eval()
    fq, x = _calibrated_fq(models.as_sequential(model), reduce_range=True)
    int8 = Q.to_int8(fq)
    assert isinstance(int8, nn.Sequential) and {"quantize", "dequantize"} <= set(dict(int8.named_children()))
    with torch.no_grad():
        simulated, real = fq(x), int8(x)
    steps = (simulated - real).abs() / float(fq[-1].output_quant.scale)
    assert steps.max() <= 3.01  # one-step differences inside the kernels can add up over layers
    assert (steps < 0.01).float().mean() > 0.98  # but almost every output is identical
    assert (simulated.argmax(1) == real.argmax(1)).float().mean() > 0.98
    assert measure.count_params(int8) == measure.count_params(model)
    assert measure.count_flops(int8) == measure.count_flops(model)
    assert measure.serialized_bytes(int8) < measure.serialized_bytes(model) / 3.5


def test_int8_layers_in_place_of_each_quantized_layer_of_any_model():
    model = models.lenet5().eval()
    fq, x = _calibrated_fq(model, outputs=nn.Linear, layers=nn.Linear, reduce_range=True)
    int8 = Q.to_int8(fq)
    assert type(int8) is type(model) and isinstance(int8.fc1, Q.Int8Layer) and isinstance(int8.conv1, nn.Conv2d)
    with torch.no_grad():
        simulated, real = fq(x), int8(x)
    assert (real - simulated).norm() / simulated.norm() < 0.01
    with pytest.raises(ValueError, match="'conv1' has no output quantizer"):
        Q.to_int8(Q.post_training_quantize(model, x, 8, 8))


def test_as_sequential_expands_factorized_layers_for_the_int8_chain():
    from nncompress import lowrank

    x, _ = _data(32)
    base = models.lenet5().eval()
    factored = lowrank.decompose_convs(lowrank.factorize(base, {"fc1": 20}), "tucker2", {"conv2": (10, 5)}).eval()
    int8 = Q.to_int8(Q.post_training_quantize(models.as_sequential(factored), x, reduce_range=True))
    assert (int8(x).argmax(1) == factored(x).argmax(1)).float().mean() > 0.9


def test_to_int8_rejects_uncalibrated_or_low_bit_models():
    model = _mlp()
    x, _ = _data(64)
    with pytest.raises(ValueError, match="calibrate"):
        Q.to_int8(Q.apply_fake_quant(model, 8, 8))
    with pytest.raises(ValueError, match="8-bit"):
        Q.to_int8(Q.post_training_quantize(model, x, 4, 8))
    with pytest.raises(ValueError, match="activation_bits=8"):
        Q.to_int8(Q.apply_fake_quant(model, 8, None))
    with pytest.raises(ValueError, match="engine"):
        Q.to_int8(Q.post_training_quantize(model, x, 8, 8), engine="tpu")


def test_a_bare_layer_is_a_model_too():
    layer = nn.Linear(20, 5)
    x = torch.randn(30, 20, generator=torch.Generator().manual_seed(0))
    fq = Q.post_training_quantize(layer, x, 4, 8)
    assert list(Q.weight_quantizers(fq)) == [""] and list(Q.activation_quantizers(fq)) == ["input_quant", "output_quant"]
    assert {"codes", "scale", "zero_point", "shape", "bias"} <= set(Q.packed_state(fq))
    fq8 = Q.post_training_quantize(layer, x, 8, 8, reduce_range=True)
    int8 = Q.to_int8(nn.Sequential(fq8))  # a chain of one layer
    with torch.no_grad():
        assert (int8(x) - fq8(x)).abs().max() <= 1.01 * float(fq8.output_quant.scale)
