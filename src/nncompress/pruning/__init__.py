"""Pruning: masks from weights, masks on any model, physical channel removal, and procedures.

Three layers, as everywhere in the package:

- pure functions compute a mask from tensors (:mod:`.criteria`): :func:`magnitude_mask`,
  :func:`global_magnitude_masks`, :func:`channel_norms`, :func:`ln_structured_mask`, and the
  sparsity schedule :func:`polynomial_sparsity`;
- functions put masks on any model, on the layers that ``layers`` selects
  (:func:`nncompress.layers.select`: names, glob patterns, types). :func:`apply_masks`,
  :func:`prune_magnitude` and :func:`prune_channels` return a new model and leave their input
  untouched; :func:`apply_masks_`, :func:`prune_magnitude_` and :func:`prune_channels_` work in
  place (:mod:`.masks`, :mod:`.channels`). A mask is a :class:`Mask` parametrization: the forward
  pass uses ``mask * weight``, so pruned weights stay exactly zero through any optimizer step.
  Bake masks into plain weights with ``nncompress.parametrizations.bake(model, Mask)``.
  :func:`remove_channels` deletes dead channels physically, for any model whose channel
  couplings are declared (:class:`nncompress.layers.Coupling`), and :func:`to_sparse` stores
  Linear layers in CSR (:mod:`.sparse`);
- training procedures built on :func:`nncompress.train.fit` (:mod:`.procedures`):
  :func:`iterative_prune_` (Han et al.), :func:`gradual_pruning` (Zhu and Gupta),
  :func:`lottery_ticket` with :func:`rewind` (Frankle and Carbin; Frankle et al.), and
  experiments that compare them and return plain numbers: :func:`sparsity_sweep` and
  :func:`gradual_vs_one_shot`;
- one-shot pruning with calibration data and no training (:mod:`.oneshot`): :func:`wanda_mask`
  (Sun et al.), :func:`sparsegpt_prune` (Frantar and Alistarh), and :func:`nm_mask` for N:M
  patterns such as 2:4, applied to a whole model by :func:`prune_oneshot`;
- attention heads and neurons (:mod:`.heads`): :func:`gate_importance`, :func:`head_importance`
  (Michel et al.), :func:`head_masks`
  and :func:`remove_heads`, for any model whose heads are declared
  (:class:`nncompress.layers.Heads`).

Sparsity is always the fraction of weights *removed*. Pruned checkpoints of the book's models
are kept by :mod:`nncompress.store`.

References: han2015learning, zhu2017prune, li2017pruning, frankle2019lottery, frankle2019stabilizing,
sun2024simple, frantar2023sparsegpt, michel2019sixteen
"""

from .channels import prune_channels, prune_channels_, remove_channels, remove_lowest_channels
from .criteria import channel_norms, global_magnitude_masks, ln_structured_mask, magnitude_mask, polynomial_sparsity
from .masks import (Mask, apply_masks, apply_masks_, layer_sparsity, load_pruned, masks_of, prune_magnitude,
                    prune_magnitude_, rewind, rewind_)
from .heads import gate_importance, head_importance, head_masks, remove_heads
from .oneshot import ONESHOT_METHODS, nm_mask, prune_oneshot, sparsegpt_prune, wanda_mask
from .procedures import gradual_pruning, gradual_vs_one_shot, iterative_prune_, lottery_ticket, sparsity_sweep
from .sparse import SparseLinear, to_sparse

__all__ = [
    "magnitude_mask", "global_magnitude_masks", "channel_norms", "ln_structured_mask", "polynomial_sparsity",
    "Mask", "apply_masks", "apply_masks_", "masks_of", "prune_magnitude", "prune_magnitude_", "layer_sparsity",
    "load_pruned", "rewind", "rewind_",
    "prune_channels", "prune_channels_", "remove_channels", "remove_lowest_channels",
    "SparseLinear", "to_sparse",
    "iterative_prune_", "gradual_pruning", "sparsity_sweep", "gradual_vs_one_shot", "lottery_ticket",
    "nm_mask", "wanda_mask", "sparsegpt_prune", "ONESHOT_METHODS", "prune_oneshot",
    "gate_importance", "head_importance", "head_masks", "remove_heads",
]
