"""Techniques composed: each composition's outputs, stored size and sparsity are checked.

prune -> quantize -> pack; factorize -> int8; distill -> int8. The int8 conversions quantize
activations with ``reduce_range`` (half the codes), as torch.ao's x86 configuration does: on
CPUs without VNNI the x86 kernels add pairs of u8 x s8 products in int16, which saturates for
inputs that fill the 8-bit range.
"""

import copy

import torch
from torch import nn

from conftest import blobs
from nncompress import distillation, layers, lowrank, measure, models, parametrizations, pruning
from nncompress import quantization as Q
from nncompress.coding import unpack_bits
from nncompress.train import Recipe, fit


def _mlp(seed=0):
    torch.manual_seed(seed)
    return models.lenet_300_100().eval()


def _unpacked(model, state):
    """A plain copy of ``model`` whose weights are rebuilt from the packed codes alone."""
    plain = parametrizations.bake(model)
    for name, layer in layers.select(plain).items():
        shape = tuple(state[f"{name}.shape"].tolist())
        count = int(torch.tensor(shape).prod())
        codes = unpack_bits(state[f"{name}.codes"], 4, count).reshape(shape) - 8  # shifted by -qmin
        weight = (codes - state[f"{name}.zero_point"][:, None]) * state[f"{name}.scale"][:, None]
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(state[f"{name}.bias"])
    return plain


def test_prune_then_quantize_then_pack():
    x, _ = blobs(200)
    model = _mlp()
    pruned = pruning.prune_magnitude(model, 0.9)
    fq = Q.apply_fake_quant(pruned, weight_bits=4, activation_bits=None)
    state = Q.packed_state(fq)
    # outputs: the packed codes alone rebuild the quantized model exactly
    with torch.no_grad():
        assert torch.equal(_unpacked(model, state)(x), fq(x))
        assert (fq(x) - pruned(x)).norm() / pruned(x).norm() < 0.1  # 4 bits stay close to the pruned model
    # sparsity: every pruned weight is still zero, and nothing else was needed to store it
    weights = {n: m.weight for n, m in layers.select(fq).items()}
    masked = {n: m.weight == 0 for n, m in layers.select(pruned).items()}
    for name, w in weights.items():
        assert torch.equal(w[masked[name]], torch.zeros_like(w[masked[name]]))
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert zeros / total >= 0.9
    # size: 4 bits per weight plus per-channel scales and biases, no masks, no float weights
    assert not any(k.endswith(("original", "mask")) for k in state)
    assert total / 2 < Q.packed_bytes(fq) < total / 2 + 12_000
    assert Q.packed_bytes(fq) < measure.serialized_bytes(model) / 7


def _reduced_w8a8(model, x):
    return Q.post_training_quantize(model, x, 8, 8, outputs=nn.Linear, reduce_range=True)


def test_factorize_then_int8():
    x, _ = blobs(300)
    model = _mlp()
    factored = lowrank.factorize(model, ranks={"fc1": 32, "fc2": 16})
    assert isinstance(factored.fc1, lowrank.LowRankLinear)
    fq = _reduced_w8a8(factored, x)
    assert sorted(Q.weight_quantizers(fq)) == ["fc1.down", "fc1.up", "fc2.down", "fc2.up", "fc3"]
    int8 = Q.to_int8(fq)
    assert type(int8) is type(model) and sum(measure._int8_layer(m) for m in int8.modules()) == 5
    with torch.no_grad():
        simulated, real, reference = fq(x), int8(x), factored(x)
    assert (real - simulated).norm() / simulated.norm() < 0.01  # the kernels compute what was simulated
    assert (real - reference).norm() / reference.norm() < 0.05
    assert measure.count_params(int8) == measure.count_params(factored) < measure.count_params(model) / 4
    assert measure.serialized_bytes(int8) < measure.serialized_bytes(factored) / 2.5  # small layers: fixed costs
    chain = Q.to_int8(Q.post_training_quantize(models.as_sequential(factored), x, 8, 8, reduce_range=True))
    with torch.no_grad():
        assert (chain(x) - reference).norm() / reference.norm() < 0.05


def test_distill_then_int8():
    x, y = blobs(600)
    teacher = _mlp()
    fit(teacher, x, y, Recipe(epochs=2, lr=0.05, batch_size=64), seed=0)
    torch.manual_seed(1)
    student = models.MLP((32,)).eval()
    distillation.distill(student, teacher.eval(), x, y, Recipe(epochs=3, lr=0.05, batch_size=64),
                         [distillation.KD(temperature=4.0, alpha=0.9)], seed=0)
    before = copy.deepcopy(student.state_dict())
    int8 = Q.to_int8(_reduced_w8a8(student, x[:200]))
    assert all(torch.equal(student.state_dict()[k], v) for k, v in before.items())
    with torch.no_grad():
        float_pred, int8_pred, teacher_pred = student(x).argmax(1), int8(x).argmax(1), teacher(x).argmax(1)
    assert (float_pred == y).float().mean() > 0.9 and (teacher_pred == y).float().mean() > 0.9
    assert (int8_pred == float_pred).float().mean() > 0.98
    assert measure.count_params(int8) == measure.count_params(student) < measure.count_params(teacher) / 8
    assert measure.serialized_bytes(int8) < measure.serialized_bytes(student) / 3
