"""The reference networks every chapter compresses.

All take MNIST batches of shape ``(batch, 1, 28, 28)`` and return logits ``(batch, 10)``.
Layers are named attributes (``fc1``, ``conv1``, ...) so that per-layer tables read naturally.

References: lecun1998gradient, han2015learning, hinton2015distilling
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["MLP", "LeNet5", "lenet_300_100", "lenet5", "hinton_teacher", "hinton_student", "MODELS", "build",
           "capture_features", "own_class"]


class MLP(nn.Module):
    """Fully connected ReLU network ``784 -> hidden[0] -> ... -> 10`` with optional dropout.

    Layers are ``fc1 .. fcK``; ``dropout`` is applied after every hidden ReLU and
    ``input_dropout`` to the flattened input, as in Hinton et al.'s MNIST teacher.
    """

    def __init__(self, hidden: tuple[int, ...], dropout: float = 0.0, input_dropout: float = 0.0,
                 in_features: int = 784, num_classes: int = 10):
        super().__init__()
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive ints, got {hidden!r}")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}")
        self.hidden = tuple(hidden)
        self.input_dropout = nn.Dropout(input_dropout)
        self.dropout = nn.Dropout(dropout)
        sizes = (in_features, *hidden, num_classes)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            self.add_module(f"fc{i}", nn.Linear(n_in, n_out))
        self.depth = len(sizes) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x.flatten(1))  # (batch, 784)
        for i in range(1, self.depth):
            x = self.dropout(torch.relu(getattr(self, f"fc{i}")(x)))
        return getattr(self, f"fc{self.depth}")(x)  # (batch, 10)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's MNIST example, the variant Han et al. prune.

    conv 20@5x5 -> maxpool 2 -> conv 50@5x5 -> maxpool 2 -> fc 500 -> ReLU -> fc 10.
    As in Caffe, there is no non-linearity after the convolutions (max-pooling is the only one);
    ``conv_relu=True`` adds a ReLU after each convolution, which makes thin variants train stably.
    """

    def __init__(self, conv_channels: tuple[int, int] = (20, 50), hidden: int = 500, num_classes: int = 10,
                 conv_relu: bool = False):
        super().__init__()
        c1, c2 = conv_channels
        self.conv_relu = conv_relu
        self.conv1 = nn.Conv2d(1, c1, 5)  # (batch, c1, 24, 24)
        self.conv2 = nn.Conv2d(c1, c2, 5)  # (batch, c2, 8, 8)
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu if self.conv_relu else (lambda t: t)
        x = nn.functional.max_pool2d(act(self.conv1(x)), 2)  # (batch, c1, 12, 12)
        x = nn.functional.max_pool2d(act(self.conv2(x)), 2)  # (batch, c2, 4, 4)
        x = torch.relu(self.fc1(x.flatten(1)))  # (batch, hidden)
        return self.fc2(x)  # (batch, 10)


def lenet_300_100() -> MLP:
    """LeNet-300-100: 784-300-100-10, 266,610 parameters."""
    return MLP((300, 100))


def lenet5() -> LeNet5:
    """Caffe LeNet-5: 431,080 parameters."""
    return LeNet5()


def hinton_teacher() -> MLP:
    """Hinton et al.'s MNIST teacher: 2x1200 ReLU units, dropout 0.5 on hidden and 0.2 on input."""
    return MLP((1200, 1200), dropout=0.5, input_dropout=0.2)


def hinton_student() -> MLP:
    """Hinton et al.'s MNIST student: 2x800 ReLU units, no regularization."""
    return MLP((800, 800))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "lenet300_100": lenet_300_100,
    "lenet5": lenet5,
    "hinton_teacher": hinton_teacher,
    "hinton_student": hinton_student,
}


def build(name: str) -> nn.Module:
    """A freshly initialized model by registry name (one of :data:`MODELS`)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]()


def own_class(module: nn.Module) -> None:
    """Give a parametrized ``module`` a class of its own before its parametrizations change.

    ``torch.nn.utils.parametrize`` stores parametrized tensors as properties of a class it creates
    per module, and ``copy.deepcopy`` shares that class between original and copy. Registering or
    removing a parametrization edits the class, so without this a change to a copy would break the
    original.
    """
    if parametrize.is_parametrized(module):
        cls = module.__class__
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))



@contextmanager
def capture_features(model: nn.Module, layers: Sequence[str], kind: str = "output"
                     ) -> Iterator[dict[str, torch.Tensor]]:
    """Record what the named submodules of ``model`` receive or return, for as long as the block runs.

    Yields a dictionary that each forward pass of ``model`` refills: ``features[name]`` is the
    latest ``kind`` (``"output"`` or ``"input"``, the first positional input) of layer ``name``.
    The forward hooks are removed when the block exits, also when it raises. Tensors are kept
    as computed, attached to the autograd graph, so that losses on them train the model.

    Raises ValueError for a ``kind`` other than ``"input"``/``"output"`` or a layer name the model
    does not have.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', got {kind!r}")
    if isinstance(layers, str):
        raise TypeError("layers must be a sequence of layer names, not a single str")
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"layers {missing} not in model; it has {[n for n in modules if n]}")
    features: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            features[name] = inputs[0] if kind == "input" else output
        return hook

    handles = [modules[name].register_forward_hook(record(name)) for name in dict.fromkeys(layers)]
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()
