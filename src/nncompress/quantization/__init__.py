"""Quantization: uniform affine fake quantization, calibration, QAT, binary/ternary weights,
integer-only arithmetic and conversion to torch's int8 CPU kernels, for any model.

The family in parts, from tensors up:

- :mod:`.affine`: :func:`qrange`, :func:`qparams`, :func:`fake_quantize`, :func:`quantize`,
  :func:`dequantize` (a *b*-bit affine quantizer and its parameters);
- :mod:`.ranges`: calibrators that turn a tensor into a clipping range, and :class:`Observer`;
- :mod:`.modules`: the quantizers a model carries (weight parametrizations, activation
  quantizers) and :func:`binarize`/:func:`ternarize`;
- :mod:`.model`: :func:`apply_fake_quant`, :func:`calibrate`, :func:`post_training_quantize`,
  :func:`apply_binary` and the packed stored form;
- :mod:`.integer`: integer-only arithmetic (:class:`IntegerLinear`);
- :mod:`.int8`: :func:`to_int8` and :func:`dynamic_int8`, torch's int8 kernels;
- :mod:`.smooth`: SmoothQuant's migration of activation outliers into the weights
  (:func:`smoothing_scales`, :func:`smooth_linear`, :func:`apply_smoothing`);
- :mod:`.gptq`: weight-only quantization in groups, :func:`rtn_quantize` and
  :func:`gptq_quantize` (Frantar et al.), with calibration data and no training;
- :mod:`.awq`: AWQ's activation-aware scaling before rounding (:func:`awq_scales`,
  :func:`awq_quantize_weights`);
- :mod:`.kernels`: Linear layers on torch's weight-only int8 and int4 CPU kernels
  (:class:`Int8WeightLinear`, :class:`Int4WeightLinear`, :func:`to_weight_kernels`).

Every model-level function returns a new model of the same class and leaves its input
untouched; the in-place variants end with ``_``. Bake the quantized weights into plain tensors
with :func:`nncompress.parametrizations.bake`.
"""

from .affine import dequantize, fake_quantize, qparams, qrange, quantize
from .gptq import (WEIGHT_METHODS, WeightGrid, group_qparams, gptq_quantize, quantize_weights, rtn_quantize,
                   weight_only_bytes, weight_only_state, weight_only_weights)
from .awq import awq_quantize_weights, awq_scales
from .kernels import Int4WeightLinear, Int8WeightLinear, to_weight_kernels
from .int8 import Int8Layer, dynamic_int8, to_int8
from .integer import IntegerLinear, fixed_point_multiplier, requantize
from .model import (activation_quantizers, apply_binary, apply_binary_, apply_fake_quant, apply_fake_quant_,
                    calibrate, calibrate_, packed_bytes, packed_state, post_training_quantize, weight_quantizers)
from .modules import ActFakeQuant, BinaryWeight, TernaryWeight, WeightFakeQuant, binarize, ternarize
from .smooth import SmoothedLinear, apply_smoothing, smooth_linear, smoothing_scales
from .ranges import CALIBRATIONS, Observer, calibrated_range, minmax_range, mse_range, percentile_range

__all__ = [
    "qrange", "qparams", "fake_quantize", "quantize", "dequantize",
    "CALIBRATIONS", "minmax_range", "percentile_range", "mse_range", "calibrated_range", "Observer",
    "WeightFakeQuant", "ActFakeQuant", "BinaryWeight", "TernaryWeight", "binarize", "ternarize",
    "apply_fake_quant", "apply_fake_quant_", "apply_binary", "apply_binary_", "calibrate", "calibrate_",
    "post_training_quantize", "activation_quantizers", "weight_quantizers", "packed_state", "packed_bytes",
    "fixed_point_multiplier", "requantize", "IntegerLinear", "Int8Layer", "to_int8", "dynamic_int8",
    "group_qparams", "WeightGrid", "rtn_quantize", "gptq_quantize", "WEIGHT_METHODS", "quantize_weights",
    "weight_only_state", "weight_only_bytes", "weight_only_weights",
    "smoothing_scales", "SmoothedLinear", "smooth_linear", "apply_smoothing",
    "awq_scales", "awq_quantize_weights", "Int8WeightLinear", "Int4WeightLinear", "to_weight_kernels",
]
