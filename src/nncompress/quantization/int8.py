"""Conversion of a calibrated W8A8 fake-quantized model to torch's int8 CPU kernels.

Two forms. An ``nn.Sequential`` (a chain, for example from :func:`nncompress.models.as_sequential`)
becomes one int8 pipeline: the input is quantized once, activations stay int8 from layer to
layer, a ReLU after a layer is fused into its kernel, and the output is dequantized at the end.
Any other model keeps its forward pass, and each quantized layer becomes an :class:`Int8Layer`:
quantize at the layer's input scale, the int8 kernel, dequantize; this works where the data
flow is not a chain, inside a transformer block.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import nn

from .. import layers as L
from .. import validate
from .model import quantizer_input, weight_quantizers
from .modules import ActFakeQuant, WeightFakeQuant

__all__ = ["Int8Layer", "to_int8", "dynamic_int8"]

_DEPRECATION = r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor"


def _engine_modules():
    """torch's quantized and fused-quantized module namespaces."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq
    return nnq, nniq


class Int8Layer(nn.Module):
    """A float-in, float-out int8 layer: ``dequantize(kernel(quantize(x)))``.

    Parameters
    ----------
    quantize
        ``torch.ao.nn.quantized.Quantize`` at the layer's input scale and zero point.
    kernel
        The int8 layer (``torch.ao.nn.quantized.Linear`` or ``Conv2d``).

    References
    ----------
    jacob2018quantization
    """

    def __init__(self, quantize: nn.Module, kernel: nn.Module):
        super().__init__()
        nnq, _ = _engine_modules()
        self.quantize, self.kernel, self.dequantize = quantize, kernel, nnq.DeQuantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's float output for a float input."""
        return self.dequantize(self.kernel(self.quantize(x)))


def _int8_kernel(module, quant: WeightFakeQuant, scale: float, zero_point: int, relu: bool):
    """torch's int8 Linear/Conv2d (ReLU-fused if ``relu``) with ``module``'s quantized weight."""
    nnq, nniq = _engine_modules()
    w = quantizer_input(module, quant)
    channel_scale = quant.effective_scale().detach().double().expand(w.shape[0]).contiguous()
    channel_zp = quant.zero_point.long().expand(w.shape[0]).contiguous()
    qw = torch.quantize_per_channel(w, channel_scale, channel_zp, 0, torch.qint8)
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        layer = (nniq.LinearReLU if relu else nnq.Linear)(module.in_features, module.out_features)
    else:
        cls = nniq.ConvReLU2d if relu else nnq.Conv2d
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                    module.padding, module.dilation, module.groups, module.bias is not None)
    layer.set_weight_bias(qw, bias)
    layer.scale, layer.zero_point = scale, zero_point
    return layer


def _check_quantized(model: nn.Module) -> dict:
    """The weight quantizers of ``model``, if it is a calibrated W8A8 model."""
    quants = weight_quantizers(model)
    if not quants:
        raise ValueError("model has no quantized weights; apply post_training_quantize(weight_bits=8) first")
    if any(not isinstance(q, WeightFakeQuant) or q.bits != 8 or not q.signed or q.axis not in (0, None)
           for _, q in quants.values()):
        raise ValueError("model must have signed 8-bit weight quantizers (apply_fake_quant(weight_bits=8))")
    for name, (layer, _) in quants.items():
        for kind in ("input_quant", "output_quant"):
            act = getattr(layer, kind, None)
            if kind == "input_quant" and act is None:
                raise ValueError(f"layer {name!r} has no input quantizer: quantize with activation_bits=8 and "
                                 "calibrate first")
            if act is not None and (not bool(act.enabled) or act.bits != 8 or act.signed):
                raise ValueError(f"layer {name!r}: activations must be calibrated at 8 unsigned bits "
                                 "(activation_bits=8, then calibrate)")
    return quants


def _convert_chain(model: nn.Sequential, quants: dict) -> nn.Sequential:
    """The int8 pipeline of a quantized chain (see the module docstring)."""
    nnq, _ = _engine_modules()
    children = list(model.named_children())
    weighted = [n for n, m in children if isinstance(m, L.WEIGHTED)]
    if missing := [n for n in weighted if n not in quants]:
        raise ValueError(f"every layer of a Sequential must be quantized for the int8 chain; {missing} are not")
    first = quants[weighted[0]][0].input_quant
    out: list[tuple[str, nn.Module]] = [("quantize", nnq.Quantize(float(first.scale), int(first.zero_point),
                                                                   torch.quint8))]
    relu = False  # whether the last kernel has its ReLU fused
    for i, (name, module) in enumerate(children):
        if isinstance(module, (ActFakeQuant, nn.Dropout)):
            continue
        if not isinstance(module, L.WEIGHTED):
            if not (isinstance(module, nn.ReLU) and relu):
                out.append((name, module))
            relu = False
            continue
        following = [m for _, m in children[i + 1:]]
        relu = bool(following) and isinstance(following[0], nn.ReLU)
        act = next((m.input_quant for m in following if isinstance(m, L.WEIGHTED)), None)
        act = getattr(module, "output_quant", None) if act is None else act
        if act is None:
            raise ValueError(f"layer {name!r} is the last of the chain and has no output quantizer "
                             "(outputs=None quantizes the last layer's output)")
        kernel = _int8_kernel(module, quants[name][1], float(act.scale), int(act.zero_point), relu)
        out.append((f"{name}_relu" if relu else name, kernel))
    out.append(("dequantize", nnq.DeQuantize()))
    return nn.Sequential(OrderedDict(out)).eval()


def _convert_layers(model: nn.Module, quants: dict) -> nn.Module:
    """A copy of ``model`` with each quantized layer replaced by an :class:`Int8Layer`."""
    nnq, _ = _engine_modules()
    replacements = {}
    for name, (layer, quant) in quants.items():
        out = getattr(layer, "output_quant", None)
        if out is None:
            raise ValueError(f"layer {name!r} has no output quantizer, so its int8 kernel has no output scale; "
                             f"quantize with outputs= selecting it (e.g. outputs=nn.Linear), or convert "
                             f"nncompress.models.as_sequential(model) for a chain")
        inp = layer.input_quant
        kernel = _int8_kernel(layer, quant, float(out.scale), int(out.zero_point), relu=False)
        replacements[name] = Int8Layer(nnq.Quantize(float(inp.scale), int(inp.zero_point), torch.quint8), kernel)
    return L.replace(model, replacements).eval()


def to_int8(model: nn.Module, engine: str | None = None) -> nn.Module:
    """Convert a calibrated 8-bit fake-quantized model into torch's int8 CPU kernels.

    ``model`` comes from :func:`~.model.post_training_quantize` (or :func:`~.model.apply_fake_quant`
    and :func:`~.model.calibrate`) with ``weight_bits=8`` and ``activation_bits=8``. Weights are
    stored as per-channel qint8 and activations as quint8, so the int8 model computes what the
    fake-quantized one simulates (up to rounding inside the kernels).

    - An ``nn.Sequential`` becomes one int8 chain: each layer's output scale is the next
      layer's input quantizer (the last layer's ``output_quant``), and a ReLU right after a
      layer is fused into its kernel.
    - Any other model keeps its class and forward pass; each quantized layer becomes an
      :class:`Int8Layer` whose output scale is the layer's ``output_quant`` (quantize with
      ``outputs=`` selecting every layer to convert).

    Parameters
    ----------
    model
        The calibrated W8A8 model; left untouched.
    engine
        torch's backend (``"x86"``, ``"fbgemm"``, ``"onednn"``, ``"qnnpack"``, as
        ``torch.backends.quantized.supported_engines`` lists); None keeps the current one
        (``torch.backends.quantized.engine``: ``"x86"`` on x86 CPUs, ``"qnnpack"`` on ARM). It is
        set globally, since the packed weights are specific to it.

    Returns
    -------
    nn.Module
        The int8 model, in eval mode.

    Raises
    ------
    ValueError
        For an unsupported ``engine``; a model that is not quantized at 8 bits or not
        calibrated; a layer (named) without an input quantizer, or, outside a chain, without an
        output quantizer.

    Notes
    -----
    torch 2.13 still ships these kernels but marks quantized tensor creation as deprecated;
    that warning is silenced here (see the chapter notes).

    References
    ----------
    jacob2018quantization, krishnamoorthi2018quantizing
    """
    validate.module(model)
    engine = torch.backends.quantized.engine if engine is None else engine
    validate.choice(engine, "engine", torch.backends.quantized.supported_engines)
    quants = _check_quantized(model)
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION)
        if isinstance(model, nn.Sequential):
            return _convert_chain(model, quants)
        return _convert_layers(model, quants)


def dynamic_int8(model: nn.Module, layers: L.Layers = None, per_channel: bool = False) -> nn.Module:
    """A copy of ``model`` whose selected Linear layers run torch's dynamic int8 kernels.

    Weights are stored in int8 (one scale per tensor, or per output channel); each call
    quantizes the layer's input with a scale computed from that input, multiplies in integers
    and returns float. No calibration is needed. On x86, torch's dynamic Linear quantizes the
    input to 7 bits (``reduce_range=True``), leaving headroom for its 16-bit intermediate sums.

    Parameters
    ----------
    model
        Any module (left untouched).
    layers
        A selection of Linear layers (:func:`nncompress.layers.select`); all when None.
    per_channel
        One weight scale per output channel instead of per tensor.

    Returns
    -------
    nn.Module
        The quantized copy.

    Raises
    ------
    TypeError, ValueError
        For a bad model or selection.

    References
    ----------
    jacob2018quantization, krishnamoorthi2018quantizing
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    validate.module(model)
    chosen = L.select(model, layers, types=(nn.Linear,))
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao points users to torchao
        warnings.filterwarnings("ignore", _DEPRECATION)
        return quantize_dynamic(model, dict.fromkeys(chosen, qconfig), dtype=torch.qint8, inplace=False)
