"""The reference networks every chapter compresses.

All take MNIST batches of shape ``(batch, 1, 28, 28)`` and return logits ``(batch, 10)``.
Layers are named attributes (``fc1``, ``conv1``, ...) so that per-layer tables read naturally.

Architecture knowledge that techniques need lives here, as data, so that no technique asks which
model it was given: :func:`couplings` says which layers read each layer's output channels (for
channel removal), and :func:`as_sequential` writes a LeNet as an explicit chain of modules (for
integer pipelines that keep activations in int8 from layer to layer).

References: lecun1998gradient, han2015learning, hinton2015distilling
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from . import validate
from .layers import Coupling, Heads

__all__ = ["MLP", "LeNet5", "lenet_300_100", "lenet5", "hinton_teacher", "hinton_student", "hinton_tiny",
           "lenet5_thin", "MODELS", "build", "couplings", "as_sequential", "bert_layers", "bert_heads",
           "bert_couplings", "bert_keep_layers", "GPTConfig", "GPT", "GPTBlock", "CausalSelfAttention",
           "gpt_layers", "gpt_blocks", "gpt_heads"]


class MLP(nn.Module):
    """Fully connected ReLU network ``784 -> hidden[0] -> ... -> 10`` with optional dropout.

    Layers are ``fc1 .. fcK``; ``dropout`` is applied after every hidden ReLU and
    ``input_dropout`` to the flattened input, as in Hinton et al.'s MNIST teacher.

    Parameters
    ----------
    hidden
        Widths of the hidden layers, a non-empty tuple of positive ints.
    dropout, input_dropout
        Dropout rates in [0, 1) for the hidden units and the input.
    in_features, num_classes
        Input and output widths.

    Raises
    ------
    TypeError, ValueError
        For an argument outside those ranges, naming it.

    References
    ----------
    lecun1998gradient, hinton2015distilling
    """

    def __init__(self, hidden: tuple[int, ...], dropout: float = 0.0, input_dropout: float = 0.0,
                 in_features: int = 784, num_classes: int = 10):
        super().__init__()
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive ints, got {hidden!r}")
        dropout = validate.fraction(dropout, "dropout")
        input_dropout = validate.fraction(input_dropout, "input_dropout")
        in_features = validate.integer(in_features, "in_features", 1)
        num_classes = validate.integer(num_classes, "num_classes", 1)
        self.input_dropout = nn.Dropout(input_dropout)
        self.dropout = nn.Dropout(dropout)
        sizes = (in_features, *hidden, num_classes)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            self.add_module(f"fc{i}", nn.Linear(n_in, n_out))
        self.depth = len(sizes) - 1

    @property
    def hidden(self) -> tuple[int, ...]:
        """Widths of the hidden layers, read from the layers (so it stays right after channel removal)."""
        return tuple(getattr(self, f"fc{i}").out_features for i in range(1, self.depth))

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

    Parameters
    ----------
    conv_channels
        Filters of the two convolutions.
    hidden
        Width of the fully connected hidden layer.
    num_classes
        Output width.
    conv_relu
        Add a ReLU after each convolution.

    References
    ----------
    lecun1998gradient, han2015learning
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
    """LeNet-300-100: 784-300-100-10, 266,610 parameters.

    Returns
    -------
    MLP
        A freshly initialized model (seed torch first for repeatability).

    References
    ----------
    lecun1998gradient, han2015learning
    """
    return MLP((300, 100))


def lenet5() -> LeNet5:
    """Caffe LeNet-5: 431,080 parameters.

    Returns
    -------
    LeNet5
        A freshly initialized model (seed torch first for repeatability).

    References
    ----------
    lecun1998gradient, han2015learning
    """
    return LeNet5()


def hinton_teacher() -> MLP:
    """Hinton et al.'s MNIST teacher: 2x1200 ReLU units, dropout 0.5 on hidden and 0.2 on input.

    Returns
    -------
    MLP
        A freshly initialized model (seed torch first for repeatability).

    References
    ----------
    hinton2015distilling
    """
    return MLP((1200, 1200), dropout=0.5, input_dropout=0.2)


def hinton_student() -> MLP:
    """Hinton et al.'s MNIST student: 2x800 ReLU units, no regularization.

    Returns
    -------
    MLP
        A freshly initialized model (seed torch first for repeatability).

    References
    ----------
    hinton2015distilling
    """
    return MLP((800, 800))


def hinton_tiny() -> MLP:
    """The smallest student of the distillation chapter's temperature sweep: 2x30 ReLU units.

    Returns
    -------
    MLP
        A freshly initialized model (seed torch first for repeatability).

    References
    ----------
    hinton2015distilling
    """
    return MLP((30, 30))


def lenet5_thin() -> LeNet5:
    """The thin LeNet-5 student of the distillation chapter: 5 and 10 channels, 50 hidden units,
    ReLU after each convolution (9,950 parameters, 43x fewer than LeNet-5).

    Returns
    -------
    LeNet5
        A freshly initialized model (seed torch first for repeatability).

    References
    ----------
    romero2015fitnets, zagoruyko2017paying
    """
    return LeNet5(conv_channels=(5, 10), hidden=50, conv_relu=True)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "lenet300_100": lenet_300_100,
    "lenet5": lenet5,
    "hinton_teacher": hinton_teacher,
    "hinton_student": hinton_student,
    "hinton_tiny": hinton_tiny,
    "lenet5_thin": lenet5_thin,
}


def build(name: str) -> nn.Module:
    """A freshly initialized model by registry name.

    Parameters
    ----------
    name
        One of :data:`MODELS`: ``"lenet300_100"``, ``"lenet5"``, ``"hinton_teacher"``,
        ``"hinton_student"``, ``"hinton_tiny"``, ``"lenet5_thin"``.

    Returns
    -------
    nn.Module
        The model, with torch's default initialization (seed torch first for repeatability).

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    ValueError
        For an unknown name.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]()


def couplings(model: nn.Module) -> list[Coupling]:
    """The channel couplings of one of the book's networks, for :func:`nncompress.pruning.remove_channels`.

    Parameters
    ----------
    model
        An :class:`MLP` (each hidden layer ``fcI`` feeds ``fcI+1``) or a :class:`LeNet5`
        (``conv1`` feeds ``conv2``, ``conv2`` feeds ``fc1`` through the flatten of its 4 x 4
        positions per channel, ``fc1`` feeds ``fc2``). The output layer feeds nothing: its
        channels are the classes.

    Returns
    -------
    list of Coupling
        In data-flow order.

    Raises
    ------
    TypeError
        For any other model; declare its couplings with :class:`nncompress.layers.Coupling`.
    """
    if isinstance(model, MLP):
        return [Coupling(f"fc{i}", (f"fc{i + 1}",)) for i in range(1, model.depth)]
    if isinstance(model, LeNet5):
        spatial = model.fc1.in_features // model.conv2.out_channels  # 4 x 4 positions per channel
        return [Coupling("conv1", ("conv2",)), Coupling("conv2", ("fc1",), repeat=spatial),
                Coupling("fc1", ("fc2",))]
    raise TypeError(f"no couplings are declared for a {type(model).__name__}; pass a list of "
                    "nncompress.layers.Coupling for it")


def as_sequential(model: nn.Module) -> nn.Sequential:
    """An equivalent :class:`~torch.nn.Sequential` copy of one of the book's networks.

    The chain form lets an integer pipeline keep activations in int8 from one layer to the next
    (``nncompress.quantization.to_int8`` fuses a ReLU into the layer before it). Layer names are
    kept (``fc1``, ``conv1``, ...), so weights load from the original state_dict. A factorized
    layer becomes its parts: a ``lowrank.LowRankLinear`` ``fc1`` gives ``fc1_down`` and
    ``fc1_up``, a decomposed convolution (a Sequential) ``conv2_0``, ``conv2_1``, ... .

    Parameters
    ----------
    model
        An :class:`MLP`, a :class:`LeNet5`, or an ``nn.Sequential`` (copied as it is).

    Returns
    -------
    nn.Sequential
        A new model computing the same function; ``model`` is left unchanged.

    Raises
    ------
    TypeError
        For any other model.
    """
    if isinstance(model, nn.Sequential):
        return copy.deepcopy(model)
    layers: list[tuple[str, nn.Module]] = []

    def add(name: str, module: nn.Module) -> None:
        # factorized layers (lowrank.LowRankLinear, decomposed convolutions) become their parts
        if hasattr(module, "down") and hasattr(module, "up") and not isinstance(module, (nn.Linear, nn.Conv2d)):
            layers.extend([(f"{name}_down", copy.deepcopy(module.down)), (f"{name}_up", copy.deepcopy(module.up))])
        elif isinstance(module, nn.Sequential):
            layers.extend((f"{name}_{i}", copy.deepcopy(m)) for i, m in enumerate(module))
        else:
            layers.append((name, copy.deepcopy(module)))

    if isinstance(model, MLP):
        layers.append(("flatten", nn.Flatten()))
        if model.input_dropout.p > 0:
            layers.append(("input_dropout", nn.Dropout(model.input_dropout.p)))
        for i in range(1, model.depth + 1):
            add(f"fc{i}", getattr(model, f"fc{i}"))
            if i < model.depth:
                layers.append((f"relu{i}", nn.ReLU()))
                if model.dropout.p > 0:
                    layers.append((f"dropout{i}", nn.Dropout(model.dropout.p)))
    elif isinstance(model, LeNet5):
        for i, conv in ((1, model.conv1), (2, model.conv2)):
            add(f"conv{i}", conv)
            if model.conv_relu:
                layers.append((f"conv_relu{i}", nn.ReLU()))
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
        layers.append(("flatten", nn.Flatten()))
        add("fc1", model.fc1)
        layers.append(("relu1", nn.ReLU()))
        add("fc2", model.fc2)
    else:
        raise TypeError(f"model must be an MLP, LeNet5 or nn.Sequential, got {type(model).__name__}")
    return nn.Sequential(OrderedDict(layers)).train(model.training)


def bert_layers(model: nn.Module) -> list[str]:
    """The names of the transformer layers of a Hugging Face BERT, alone or inside a sentence encoder.

    Parameters
    ----------
    model
        A ``BertModel`` or a module holding one as ``transformer`` (:class:`nncompress.text.SentenceEncoder`).

    Returns
    -------
    list of str
        ``"[transformer.]encoder.layer.<i>"`` for every layer, in order.

    Raises
    ------
    TypeError
        If ``model`` has no BERT encoder there.
    """
    prefix = "transformer." if hasattr(model, "transformer") else ""
    bert = model.transformer if prefix else model
    if not hasattr(bert, "encoder") or not hasattr(bert.encoder, "layer"):
        raise TypeError(f"no BERT encoder (encoder.layer) in a {type(model).__name__}")
    return [f"{prefix}encoder.layer.{i}" for i in range(len(bert.encoder.layer))]


def bert_heads(model: nn.Module) -> list[Heads]:
    """Where each layer's attention heads live in a Hugging Face BERT (see :class:`nncompress.layers.Heads`).

    The head count of a layer is read from its query projection (rows / head size), so a model
    whose heads were already removed is described as it is.

    Parameters
    ----------
    model
        As :func:`bert_layers`.

    Returns
    -------
    list of Heads
        One per layer.
    """
    modules = dict(model.named_modules())
    out = []
    for layer in bert_layers(model):
        size = modules[f"{layer}.attention.self"].attention_head_size
        query = f"{layer}.attention.self.query"
        out.append(Heads(query, f"{layer}.attention.self.key", f"{layer}.attention.self.value",
                         f"{layer}.attention.output.dense", modules[query].out_features // size, size))
    return out


def bert_couplings(model: nn.Module) -> list[Coupling]:
    """The couplings of a Hugging Face BERT, for :func:`nncompress.pruning.remove_channels`.

    In each layer the feed-forward block's first matrix feeds its second (the GELU between keeps
    zero at zero), and the heads are coupled as :meth:`nncompress.layers.Heads.couplings` says.

    Parameters
    ----------
    model
        As :func:`bert_layers`.

    Returns
    -------
    list of Coupling
        In data-flow order.
    """
    out = []
    for layer, heads in zip(bert_layers(model), bert_heads(model)):
        out += heads.couplings() + [Coupling(f"{layer}.intermediate.dense", (f"{layer}.output.dense",))]
    return out


def bert_keep_layers(model: nn.Module, keep) -> nn.Module:
    """A copy of a Hugging Face BERT (or a sentence encoder holding one) with only the layers ``keep``.

    Parameters
    ----------
    model
        As :func:`bert_layers` (left untouched).
    keep
        Indices of the layers to keep, in the order they will run (at least one).

    Returns
    -------
    nn.Module
        The shallower copy; its config's ``num_hidden_layers`` is updated.

    Raises
    ------
    ValueError
        For an empty ``keep``, a repeated index or one out of range.

    References
    ----------
    sajjad2023effect
    """
    depth = len(bert_layers(model))
    keep = [validate.integer(i, "keep", 0, depth - 1) for i in keep]
    if not keep or len(set(keep)) != len(keep):
        raise ValueError(f"keep must list distinct layer indices in [0, {depth - 1}], got {keep}")
    out = copy.deepcopy(model)
    bert = out.transformer if hasattr(out, "transformer") else out
    bert.encoder.layer = nn.ModuleList([bert.encoder.layer[i] for i in keep])
    bert.config.num_hidden_layers = len(keep)
    return out



# The generative chapter's GPT lives in its own module; it belongs to this registry of models.
from .gpt import GPT, CausalSelfAttention, GPTBlock, GPTConfig, gpt_blocks, gpt_heads, gpt_layers  # noqa: E402
