"""nncompress: reference implementations for the book *Compressing Neural Networks*.

Importing the package has no side effects: it sets no seeds, styles or warning filters.
The shared parts are ``data``, ``models``, ``train``, ``store``, ``measure``, ``layers``,
``parametrizations``, ``validate`` and ``plotting``; each technique family adds its own module.
"""

from . import data, layers, measure, models, parametrizations, plotting, store, train, validate
from .train import set_seed

__version__ = "0.1.0"
__all__ = ["data", "models", "train", "store", "measure", "layers", "parametrizations", "validate", "plotting",
           "set_seed", "__version__"]
