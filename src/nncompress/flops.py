"""FLOPs: how the harness counts the floating-point work of one forward pass.

:func:`count_flops` and :func:`flops_by_module` use ``torch.utils.flop_counter.FlopCounterMode``
(a multiply-add counts 2; matrix products, convolutions and attention's two products only), with
two additions: a product with a sparse (CSR) matrix counts its stored values, and the CPU's
fused attention kernel, which torch 2.13 does not count, counts as torch counts its other
attention kernels. torch's int8 layers count their integer multiply-adds. Both are re-exported
by :mod:`nncompress.measure`.

References: paszke2019pytorch
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from . import validate
from .timing import MNIST_SHAPE

__all__ = ["count_flops", "flops_by_module"]


def _check_model(model) -> None:
    """Raise TypeError unless ``model`` is an ``nn.Module``."""
    validate.module(model)


def _int8_layer(module: nn.Module) -> bool:
    """Whether ``module`` is one of torch's int8 Linear/Conv layers (weights in packed params)."""
    from torch.ao.nn import quantized as nnq
    return isinstance(module, (nnq.Linear, nnq.Conv1d, nnq.Conv2d, nnq.Conv3d))


def _sparse_addmm_flops(bias, sparse, dense, *args, out_val=None, **kwargs) -> int:
    """A sparse-dense product does 2 FLOPs per stored value of the sparse matrix and dense column."""
    stored = sparse.values().numel() if sparse.layout != torch.strided else sparse.numel()
    return 2 * stored * dense.shape[1]


_sparse_addmm_flops._get_raw = True  # FlopCounterMode passes the tensors, not only their shapes


def _one_input(input_shape: Sequence[int], inputs: torch.Tensor | None) -> torch.Tensor:
    """The batch of one input whose FLOPs are counted: ``inputs``, or zeros of ``input_shape``."""
    if inputs is None:
        return torch.zeros(1, *input_shape)
    validate.tensor(inputs, "inputs")
    if len(inputs) != 1:
        raise ValueError(f"inputs must be a batch of one input, got {len(inputs)}")
    return inputs


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Attention on the CPU (``scaled_dot_product_attention``'s CPU kernel): the two matrix
    products, as torch counts them for its other attention kernels (softmax and mask not counted)."""
    return sdpa_flop_count(query, key, value)


def _flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, also counting sparse (CSR) matrix products by their stored values
    and the CPU's fused attention kernel, which torch 2.13 does not count."""
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._sparse_addmm: _sparse_addmm_flops,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops})


def count_flops(model: nn.Module, input_shape: Sequence[int] = MNIST_SHAPE, inputs: torch.Tensor | None = None) -> int:
    """FLOPs of one forward pass on a single input of shape ``input_shape`` (no batch axis), or on ``inputs``.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2; matrix
    products and convolutions only); CSR products by their stored values; torch's int8 layers
    by their integer multiply-adds.

    Parameters
    ----------
    model
        Any ``nn.Module``.
    input_shape
        The shape of one input, without the batch axis (counted on zeros).
    inputs
        A batch of one real input, used instead of zeros of ``input_shape``: for a model whose
        work depends on its input's values (a sentence encoder's on the padding of its token ids).

    Returns
    -------
    int
        FLOPs for one input.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or ``inputs`` not a tensor.
    ValueError
        If ``inputs`` is not a batch of one.

    References
    ----------
    paszke2019pytorch
    """
    _check_model(model)
    x = _one_input(input_shape, inputs)
    counter = _flop_counter()
    int8_ops = []

    def count_int8(module, inputs, output):  # 2 ops per multiply-add, as for floating point
        weight = module._weight_bias()[0]
        int8_ops.append(2 * output.numel() * weight[0].numel())

    hooks = [m.register_forward_hook(count_int8) for m in model.modules() if _int8_layer(m)]
    try:
        with torch.no_grad(), counter:
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    return int(counter.get_total_flops()) + sum(int8_ops)


def flops_by_module(model: nn.Module, input_shape: Sequence[int] = MNIST_SHAPE,
                    inputs: torch.Tensor | None = None) -> dict[str, int]:
    """FLOPs of one forward pass on one input, by module, each including its submodules' FLOPs.

    Parameters
    ----------
    model
        Any ``nn.Module``.
    input_shape, inputs
        The input, as in :func:`count_flops`.

    Returns
    -------
    dict
        Module name (as in ``named_modules``; ``""`` for the model) mapped to FLOPs, for every
        module that did any counted work.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.
    ValueError
        If ``inputs`` is not a batch of one.
    """
    _check_model(model)
    x = _one_input(input_shape, inputs)
    counter = _flop_counter()
    with torch.no_grad(), counter:
        model.eval()(x)
    top = type(model).__name__
    out = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == top else key.removeprefix(f"{top}.")
        out[name] = int(sum(ops.values()))
    return out
