"""nncompress: reference implementations for the book *Compressing Neural Networks*.

Importing the package has no side effects: it sets no seeds, styles or warning filters.
The shared parts are ``data``, ``models`` (with ``gpt``), ``train``, ``store``, ``layers``,
``parametrizations``, ``validate``, ``measure`` (with ``flops``, ``timing`` and ``tables``),
``calibration``, ``budget``, ``coding``, ``fileformat`` and ``plotting``; each technique family has its own module or
subpackage: ``pruning``, ``quantization``, ``lowrank``, ``distillation``, ``sharing``, ``dynamic``
and ``practice``; ``text`` holds sentence encoders on STS-B and the character-level GPT on Tiny
Shakespeare (Part III).
"""

from . import (budget, calibration, coding, data, distillation, dynamic, fileformat, layers, lowrank, measure, models,
               parametrizations, plotting, practice, pruning, quantization, sharing, store, tables, text, timing,
               train, validate)
from .train import set_seed

__version__ = "0.1.0"
__all__ = ["data", "models", "train", "store", "layers", "parametrizations", "validate", "measure", "timing",
           "tables", "calibration", "budget", "coding", "fileformat", "plotting", "pruning", "quantization", "lowrank",
           "distillation", "sharing", "dynamic", "practice", "text", "set_seed", "__version__"]
