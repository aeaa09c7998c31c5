"""Level (b): quantizing whole models, whatever their architecture.

:func:`apply_fake_quant` attaches a weight quantizer to every selected layer (a
parametrization) and an activation quantizer to its input (a child ``input_quant`` called by a
forward pre-hook), plus one on the output of the layers chosen by ``outputs`` (``output_quant``).
The model keeps its class and its forward pass, so this works inside a transformer block as in a
LeNet. :func:`calibrate_` then fixes the activation ranges point after point, in module order.
"""

from __future__ import annotations

import copy
import io

import torch
from torch import nn

from .. import layers as L
from .. import parametrizations, validate
from ..coding import pack_bits
from ..train import predict
from .modules import ActFakeQuant, BinaryWeight, TernaryWeight, WeightFakeQuant
from .ranges import CALIBRATIONS

__all__ = ["apply_fake_quant", "apply_fake_quant_", "apply_binary", "apply_binary_", "calibrate", "calibrate_",
           "post_training_quantize", "activation_quantizers", "weight_quantizers", "packed_state", "packed_bytes"]

WEIGHT_QUANTIZERS = (WeightFakeQuant, BinaryWeight, TernaryWeight)


def _attach_act(layer: nn.Module, where: str, bits: int, learn_scale: bool, reduce_range: bool) -> None:
    """Give ``layer`` an observing ``input_quant``/``output_quant`` child and the hook that calls it."""
    quant = ActFakeQuant(bits, signed=False, learn_scale=learn_scale, reduce_range=reduce_range)
    if where == "input":
        layer.input_quant = quant
        layer.register_forward_pre_hook(quant.input_hook)
    else:
        layer.output_quant = quant
        layer.register_forward_hook(quant.output_hook)


def _output_layers(model: nn.Module, chosen: dict, outputs) -> list[str]:
    """Names of the quantized layers whose output is quantized too (default: the last one)."""
    if outputs is None:
        return [list(chosen)[-1]]
    names = list(L.select(model, outputs))
    stray = [n for n in names if n not in chosen]
    if stray:
        raise ValueError(f"outputs selects {stray}, which are not among the quantized layers {list(chosen)}")
    return names


def apply_fake_quant_(model: nn.Module, weight_bits: int = 8, activation_bits: int | None = 8, layers=None,
                      per_channel: bool = True, weight_method: str = "minmax", percentile: float = 99.99,
                      learn_scale: bool = False, outputs=None, reduce_range: bool = False) -> nn.Module:
    """:func:`apply_fake_quant` in place.

    Parameters
    ----------
    model, ...
        As :func:`apply_fake_quant`.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    TypeError, ValueError
        As :func:`apply_fake_quant`.
    """
    validate.module(model)
    weight_bits = validate.bits(weight_bits, "weight_bits")
    if activation_bits is not None:
        activation_bits = validate.bits(activation_bits, "activation_bits")
    validate.choice(weight_method, "weight_method", CALIBRATIONS)
    validate.number(percentile, "percentile", 50.0, 100.0, low_open=True)
    chosen = L.select(model, layers)
    if any(parametrizations.find(m, WEIGHT_QUANTIZERS) for m in chosen.values()):
        raise ValueError("layers: some selected layers are already quantized")
    output_names = _output_layers(model, chosen, outputs) if activation_bits is not None else []
    for name, layer in chosen.items():
        quant = WeightFakeQuant.from_weight(layer.weight, weight_bits, per_channel, True, weight_method,
                                            learn_scale, percentile)
        parametrizations.attach_(layer, "weight", quant)
        if activation_bits is not None:
            _attach_act(layer, "input", activation_bits, learn_scale, reduce_range)
            if name in output_names:
                _attach_act(layer, "output", activation_bits, learn_scale, reduce_range)
    return model


def apply_fake_quant(model: nn.Module, weight_bits: int = 8, activation_bits: int | None = 8, layers=None,
                     per_channel: bool = True, weight_method: str = "minmax", percentile: float = 99.99,
                     learn_scale: bool = False, outputs=None, reduce_range: bool = False) -> nn.Module:
    """A fake-quantized copy of ``model``, of the same class; ``model`` is left untouched.

    Each selected layer's weight gets a :class:`WeightFakeQuant` parametrization (symmetric,
    signed, calibrated on the current weight, after any mask, with ``weight_method``). Unless
    ``activation_bits`` is None, each selected layer also gets an observing :class:`ActFakeQuant`
    child ``input_quant`` applied to its input, and the layers chosen by ``outputs`` an
    ``output_quant`` applied to their output. They observe until :func:`calibrate` fixes their
    ranges. Parameter names are kept (``fc1.weight``); ``print(model)`` shows the quantizers.

    Parameters
    ----------
    model
        Any module.
    weight_bits
        Weight bit width, an int in [1, 16].
    activation_bits
        Activation bit width, or None to quantize weights only.
    layers
        Which layers to quantize (see :func:`nncompress.layers.select`); default every
        Linear/Conv2d.
    per_channel
        One weight scale per output channel instead of one per tensor.
    weight_method, percentile
        How weight ranges are calibrated (see :func:`~.ranges.calibrated_range`).
    learn_scale
        Make every scale trainable (LSQ), for quantization-aware training.
    outputs
        Quantized layers whose output is quantized too (a selection as ``layers``); default None:
        the last selected layer in module order, the model's output in a chain.
    reduce_range
        Activation quantizers use half their codes (see :class:`ActFakeQuant`); recommended
        before :func:`~.int8.to_int8` with the x86 engine on inputs that fill the code range.

    Returns
    -------
    nn.Module
        The new model.

    Raises
    ------
    TypeError, ValueError
        For a bad argument (named in the message), a selection that matches nothing, ``outputs``
        outside the quantized layers, or layers that are already quantized.

    References
    ----------
    jacob2018quantization, krishnamoorthi2018quantizing
    """
    validate.module(model)
    return apply_fake_quant_(copy.deepcopy(model), weight_bits, activation_bits, layers, per_channel,
                             weight_method, percentile, learn_scale, outputs, reduce_range)


def apply_binary_(model: nn.Module, ternary: bool = False, threshold: float = 0.7, layers=None) -> nn.Module:
    """:func:`apply_binary` in place.

    Parameters
    ----------
    model, ...
        As :func:`apply_binary`.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    TypeError, ValueError
        As :func:`apply_binary`.
    """
    validate.module(model)
    threshold = validate.number(threshold, "threshold", 0.0, 2.0, high_open=True)
    for layer in L.select(model, layers).values():
        parametrizations.attach_(layer, "weight", TernaryWeight(threshold) if ternary else BinaryWeight())
    return model


def apply_binary(model: nn.Module, ternary: bool = False, threshold: float = 0.7, layers=None) -> nn.Module:
    """A copy of ``model`` whose selected weights are binarized (or ternarized); same class.

    Activations stay in floating point, as in BinaryConnect and ternary weight networks.

    Parameters
    ----------
    model
        Any module.
    ternary
        :class:`TernaryWeight` instead of :class:`BinaryWeight`.
    threshold
        The ternary threshold, in [0, 2).
    layers
        Which layers (see :func:`nncompress.layers.select`); default every Linear/Conv2d.

    Returns
    -------
    nn.Module
        The new model.

    Raises
    ------
    TypeError, ValueError
        For a bad ``model``, ``threshold`` or ``layers``.

    References
    ----------
    courbariaux2015binaryconnect, rastegari2016xnor, li2016ternary
    """
    validate.module(model)
    return apply_binary_(copy.deepcopy(model), ternary, threshold, layers)


def activation_quantizers(model: nn.Module) -> dict[str, ActFakeQuant]:
    """The activation quantizers of ``model``.

    Parameters
    ----------
    model
        Any module.

    Returns
    -------
    dict
        ``{qualified name: ActFakeQuant}`` in module order (the data flow's order).
    """
    return {n: m for n, m in validate.module(model).named_modules() if isinstance(m, ActFakeQuant)}


@torch.no_grad()
def calibrate_(model: nn.Module, inputs: torch.Tensor, method: str = "minmax", percentile: float = 99.99,
               batch_size: int = 1000, sequential: bool = True) -> nn.Module:
    """:func:`calibrate` in place.

    Parameters
    ----------
    model, ...
        As :func:`calibrate`.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    TypeError, ValueError
        As :func:`calibrate`.
    """
    validate.module(model)
    batches = list(inputs) if isinstance(inputs, (list, tuple)) else None
    for batch in batches if batches is not None else [inputs]:
        validate.tensor(batch, "inputs")
    if batches == []:
        raise ValueError("inputs must hold at least one batch")
    validate.choice(method, "method", CALIBRATIONS)
    validate.number(percentile, "percentile", 50.0, 100.0, low_open=True)
    validate.integer(batch_size, "batch_size", 1)
    pending = [q for q in activation_quantizers(model).values() if not bool(q.enabled)]
    for group in [[q] for q in pending] if sequential else [pending]:
        if batches is None:
            predict(model, inputs, batch_size)
        else:
            for batch in batches:
                predict(model, batch, len(batch))
        for quant in group:
            quant.set_range(*quant.observer.range(method, quant.range_bits, quant.signed, percentile))
        for other in pending:
            other.observer.reset()
    return model


def calibrate(model: nn.Module, inputs: torch.Tensor, method: str = "minmax", percentile: float = 99.99,
              batch_size: int = 1000, sequential: bool = True) -> nn.Module:
    """A copy of ``model`` with every observing :class:`ActFakeQuant`'s range fixed on ``inputs``.

    Quantization points are calibrated one after another in module order, so each sees the
    already-quantized output of the ones before it, as it will at inference: one pass over
    ``inputs`` per point. ``sequential=False`` calibrates them all in one pass, on the float
    activations: much faster for a model with many points (a transformer has dozens).

    Parameters
    ----------
    model
        A model from :func:`apply_fake_quant`.
    inputs
        Calibration inputs: a non-empty tensor of the model's inputs, cut into batches of
        ``batch_size``, or a list of batches (e.g. sentences grouped by length, without padding).
    method, percentile
        How ranges are chosen (see :func:`~.ranges.calibrated_range`).
    batch_size
        Inputs per forward pass, a positive int.
    sequential
        Calibrate the points one after another (True) or all at once (False).

    Returns
    -------
    nn.Module
        The calibrated copy.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, named in the message (an empty ``inputs`` among them).

    References
    ----------
    krishnamoorthi2018quantizing, nagel2021white
    """
    validate.module(model)
    return calibrate_(copy.deepcopy(model), inputs, method, percentile, batch_size, sequential)


def post_training_quantize(model: nn.Module, inputs: torch.Tensor, weight_bits: int = 8,
                           activation_bits: int | None = 8, per_channel: bool = True, weight_method: str = "minmax",
                           activation_method: str = "minmax", percentile: float = 99.99,
                           learn_scale: bool = False, layers=None, outputs=None, reduce_range: bool = False,
                           sequential: bool = True) -> nn.Module:
    """:func:`apply_fake_quant`, then :func:`calibrate` on ``inputs``: post-training quantization.

    The result is also the starting point of quantization-aware training (train it with
    :func:`nncompress.train.fit`; ``learn_scale`` makes the scales trainable).

    Parameters
    ----------
    model, weight_bits, activation_bits, per_channel, weight_method, percentile, learn_scale, layers, outputs, \
    reduce_range
        As :func:`apply_fake_quant`.
    inputs
        Calibration inputs, as :func:`calibrate`.
    activation_method
        How activation ranges are chosen, as ``method`` of :func:`calibrate`.
    sequential
        As :func:`calibrate`.

    Returns
    -------
    nn.Module
        A new, calibrated fake-quantized model of the same class; ``model`` is left untouched.

    Raises
    ------
    TypeError, ValueError
        As :func:`apply_fake_quant` and :func:`calibrate`.

    References
    ----------
    jacob2018quantization, krishnamoorthi2018quantizing, nagel2021white
    """
    for batch in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        validate.tensor(batch, "inputs")
    fq = apply_fake_quant(model, weight_bits, activation_bits, layers, per_channel, weight_method, percentile,
                          learn_scale, outputs, reduce_range)
    return calibrate_(fq, inputs, activation_method, percentile, sequential=sequential) if activation_bits is not None else fq


def weight_quantizers(model: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
    """Every quantized weight of ``model``.

    Parameters
    ----------
    model
        Any module.

    Returns
    -------
    dict
        ``{layer name: (layer, weight quantizer)}``.

    Raises
    ------
    TypeError
        If ``model`` is not a module.
    """
    found = parametrizations.find(model, WEIGHT_QUANTIZERS)
    names = {key: key[: -len("weight")].rstrip(".") for key in found if key.rpartition(".")[2] == "weight"}
    return {name: (model.get_submodule(name), found[key]) for key, name in names.items()}


def quantizer_input(layer: nn.Module, quant: nn.Module) -> torch.Tensor:
    """The tensor ``quant`` receives: ``layer``'s original weight after the parametrizations before it.

    A mask attached before the quantizer is applied here, so codes and int8 kernels store the
    masked weight (zeros quantize to the zero point exactly).

    Parameters
    ----------
    layer
        A layer with a weight quantizer.
    quant
        That quantizer (from :func:`weight_quantizers`).

    Returns
    -------
    torch.Tensor
        The weight the quantizer receives.

    Raises
    ------
    ValueError
        If parametrizations follow the quantizer (the stored codes would not be the weight used).
    """
    chain = parametrizations.chain(layer, "weight")
    position = next(i for i, p in enumerate(chain) if p is quant)
    if position != len(chain) - 1:
        raise ValueError("the weight quantizer must be the last parametrization of its weight; "
                         f"it is followed by {[type(p).__name__ for p in chain[position + 1:]]}")
    w = parametrizations.original(layer, "weight")
    with torch.no_grad():
        for p in chain[:position]:
            w = p(w)
    return w.detach()


def packed_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a deployed quantized model stores: bit-packed weight codes plus float32 scales and biases.

    Each quantized weight becomes ``<layer>.codes`` (uint8, ``bits`` per weight), ``<layer>.shape``,
    ``<layer>.scale`` and, for uniform quantizers, ``<layer>.zero_point`` (int32); binary and
    ternary weights store one ``alpha`` per output channel. The codes are those of the weight the
    quantizer receives, after any mask attached before it; masks themselves are not stored (a
    pruned weight quantizes to the zero point exactly). Biases and other tensors are kept as they
    are, activation scales and zero points as ``<layer>.input.scale``, ``<layer>.output.zero_point``
    and so on; calibration statistics are dropped.

    Parameters
    ----------
    model
        A model with quantized weights (:func:`apply_fake_quant` or :func:`apply_binary`).

    Returns
    -------
    dict
        ``{name: tensor}``, ready for ``torch.save``.

    Raises
    ------
    TypeError
        If ``model`` is not a module.
    ValueError
        If it has no quantized weights, or a weight quantizer is not its weight's last
        parametrization.

    References
    ----------
    han2016deep, jacob2018quantization
    """
    quantizers = weight_quantizers(model)
    if not quantizers:
        raise ValueError("model has no quantized weights; apply_fake_quant or apply_binary first")
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, (layer, quant) in quantizers.items():
            prefix = f"{name}." if name else ""
            w = quantizer_input(layer, quant)
            state[f"{prefix}codes"] = pack_bits(quant.codes(w), quant.bits)
            state[f"{prefix}shape"] = torch.tensor(w.shape, dtype=torch.int32)
            if isinstance(quant, WeightFakeQuant):
                state[f"{prefix}scale"] = quant.effective_scale().detach().clone()
                state[f"{prefix}zero_point"] = quant.zero_point.clone()
            else:
                q = layer.weight  # alpha * code per channel
                state[f"{prefix}scale"] = q.abs().reshape(q.shape[0], -1).amax(1)
        dropped = tuple(f"{n}.parametrizations.weight." if n else "parametrizations.weight." for n in quantizers)
        for key, value in model.state_dict().items():
            if not key.startswith(dropped) and not key.endswith(".enabled") and ".observer." not in key:
                state[_short(key)] = value.clone()
    return state


def _short(key: str) -> str:
    """The stored name of a state_dict entry: ``fc1.input_quant.scale`` is ``fc1.input.scale``."""
    return key.replace(".input_quant.", ".input.").replace(".output_quant.", ".output.")


def packed_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(packed_state(model))``: the quantized model's real stored size.

    Parameters
    ----------
    model
        A model with quantized weights.

    Returns
    -------
    int
        The size in bytes.

    Raises
    ------
    TypeError, ValueError
        As :func:`packed_state`.

    References
    ----------
    han2016deep
    """
    buffer = io.BytesIO()
    torch.save(packed_state(model), buffer)
    return buffer.getbuffer().nbytes
