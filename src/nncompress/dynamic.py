"""Dynamic inference: networks with early exits, which stop computing once they are confident.

An early-exit network is a chain of blocks, each followed by a classifier head (an *exit*).
Training minimizes the weighted sum of every exit's cross-entropy (:func:`exit_loss`). At
inference, an input leaves at the first exit whose largest softmax probability exceeds a
threshold, so easy inputs pay for the first blocks only; the last exit answers for the rest.

Level (a): :func:`confidence` and :func:`choose_exits` implement the rule on precomputed logits.
Level (b): :class:`EarlyExitNet` (and :func:`early_exit_lenet`) returns every exit's logits in
training mode; :class:`DynamicExit` wraps a trained one to run truly dynamically, forwarding only
the inputs that have not exited yet, so the harness can time it. Level (c): :func:`exit_costs`
counts the FLOPs of stopping at each exit, and :func:`threshold_sweep` traces accuracy against
the average FLOPs per input.

References: teerapittayanon2016branchynet, kaya2019shallow, huang2018multi
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import validate
from .measure import MNIST_SHAPE, count_flops

__all__ = ["EarlyExitNet", "early_exit_lenet", "exit_loss", "confidence", "choose_exits", "DynamicExit",
           "exit_paths", "exit_costs", "threshold_sweep"]


def _check_threshold(threshold, name: str = "threshold") -> float:
    """A confidence threshold: a number in [0, 1]."""
    return validate.number(threshold, name, 0, 1)


def _check_net(model) -> None:
    """Raise TypeError unless ``model`` is an :class:`EarlyExitNet`."""
    if not isinstance(model, EarlyExitNet):
        raise TypeError(f"model must be an EarlyExitNet, got {type(model).__name__}")


class EarlyExitNet(nn.Module):
    """``blocks[0] -> blocks[1] -> ...``, with ``heads[i]`` reading the output of ``blocks[i]``.

    ``forward`` returns the list of every exit's logits, first exit first; the last head is the
    ordinary classifier, so ``model(x)[-1]`` is the network without early exits.

    Parameters
    ----------
    blocks
        The stages of the backbone, applied in order.
    heads
        One classifier per block, reading that block's output (as many as ``blocks``, >= 2).

    Raises
    ------
    ValueError
        If ``blocks`` and ``heads`` differ in length or hold fewer than two modules.

    References
    ----------
    teerapittayanon2016branchynet
    """

    def __init__(self, blocks: Sequence[nn.Module], heads: Sequence[nn.Module]):
        super().__init__()
        if len(blocks) != len(heads) or len(blocks) < 2:
            raise ValueError(f"blocks and heads must have the same length, at least 2; got {len(blocks)} and {len(heads)}")
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for block, head in zip(self.blocks, self.heads):
            x = block(x)
            outputs.append(head(x))
        return outputs


def early_exit_lenet(channels: tuple[int, int] = (20, 50), hidden: int = 500) -> EarlyExitNet:
    """A LeNet-5 (ReLU after each convolution) with exits after each convolution stage.

    Exit 1 reads the first stage's ``(c1, 12, 12)`` maps, pooled again to ``(c1, 6, 6)``; exit 2
    reads the second stage's ``(c2, 4, 4)`` maps; exit 3 is LeNet-5's classifier
    (fc ``hidden`` -> ReLU -> fc 10).

    Parameters
    ----------
    channels
        Output channels of the two convolutions (ints >= 1).
    hidden
        Units of the hidden fully connected layer (an int >= 1).

    Returns
    -------
    EarlyExitNet
        The untrained network, with three exits.

    Raises
    ------
    TypeError, ValueError
        If a width is not an int >= 1.

    References
    ----------
    teerapittayanon2016branchynet, lecun1998gradient
    """
    c1, c2 = (validate.integer(c, f"channels[{i}]", 1) for i, c in enumerate(channels))
    hidden = validate.integer(hidden, "hidden", 1)
    blocks = [
        nn.Sequential(nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2)),  # (batch, c1, 12, 12)
        nn.Sequential(nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2)),  # (batch, c2, 4, 4)
        nn.Sequential(nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU()),  # (batch, hidden)
    ]
    heads = [
        nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c1 * 36, 10)),
        nn.Sequential(nn.Flatten(), nn.Linear(c2 * 16, 10)),
        nn.Linear(hidden, 10),
    ]
    return EarlyExitNet(blocks, heads)


def exit_loss(weights: Sequence[float] | None = None):
    """A ``loss_fn`` for :func:`nncompress.train.fit`: the weighted sum of every exit's cross-entropy.

    BranchyNet trains its branches jointly with this loss.

    Parameters
    ----------
    weights
        One non-negative finite weight per exit, or None for equal weights of 1.

    Returns
    -------
    callable
        ``loss(model, xb, yb) -> tensor``, which raises ValueError if the model has a number of
        exits other than ``len(weights)``.

    Raises
    ------
    TypeError
        If a weight is not a number.
    ValueError
        If ``weights`` is empty, or a weight is negative, NaN or infinite.

    References
    ----------
    teerapittayanon2016branchynet
    """
    if weights is not None:
        if len(weights) == 0:
            raise ValueError("weights must hold one non-negative finite number per exit, got none")
        weights = [validate.number(w, f"weights[{i}]", 0.0) for i, w in enumerate(weights)]

    def loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        outputs = model(xb)
        w = weights if weights is not None else [1.0] * len(outputs)
        if len(w) != len(outputs):
            raise ValueError(f"got {len(w)} weights for {len(outputs)} exits")
        return sum(wi * nn.functional.cross_entropy(out, yb) for wi, out in zip(w, outputs))

    return loss


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """The largest softmax probability of each row of ``logits``.

    Parameters
    ----------
    logits
        A ``(batch, classes)`` tensor.

    Returns
    -------
    torch.Tensor
        ``(batch,)`` float confidences in (0, 1].

    References
    ----------
    teerapittayanon2016branchynet
    """
    return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


def choose_exits(exit_logits: Sequence[torch.Tensor], threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The early-exit rule on precomputed logits: each input leaves at the first exit whose
    confidence is *above* ``threshold`` (in [0, 1]), or at the last exit.

    Threshold 0 sends every input out at the first exit; threshold 1 sends every input to the
    last.

    Parameters
    ----------
    exit_logits
        Every exit's ``(batch, classes)`` logits, first exit first.
    threshold
        A number in [0, 1].

    Returns
    -------
    tuple of torch.Tensor
        ``(predictions, exit_index)``, both ``(batch,)`` int64.

    Raises
    ------
    TypeError, ValueError
        If ``threshold`` is not a number in [0, 1].

    References
    ----------
    teerapittayanon2016branchynet
    """
    threshold = _check_threshold(threshold)
    batch = exit_logits[-1].shape[0]
    chosen = torch.full((batch,), len(exit_logits) - 1, dtype=torch.int64)
    for i in reversed(range(len(exit_logits) - 1)):
        chosen[confidence(exit_logits[i]) > threshold] = i
    stacked = torch.stack([logits.argmax(-1) for logits in exit_logits])  # (exits, batch)
    return stacked.gather(0, chosen[None]).squeeze(0), chosen


class DynamicExit(nn.Module):
    """Run a trained :class:`EarlyExitNet` with early exits: after each block, the inputs whose
    exit is confident enough leave with that exit's logits, and only the others go on.

    ``forward`` returns ``(batch, classes)`` logits; the logits of input ``j`` are those of the exit
    :func:`choose_exits` picks for it, so the predictions agree. ``last_exits`` records each input's
    exit after a call.

    Parameters
    ----------
    model
        A trained :class:`EarlyExitNet`.
    threshold
        A number in [0, 1], as in :func:`choose_exits`.

    Raises
    ------
    TypeError
        If ``model`` is not an :class:`EarlyExitNet` or ``threshold`` not a number.
    ValueError
        If ``threshold`` is outside [0, 1].

    References
    ----------
    teerapittayanon2016branchynet, huang2018multi
    """

    def __init__(self, model: EarlyExitNet, threshold: float):
        super().__init__()
        _check_net(model)
        self.model = model
        self.threshold = _check_threshold(threshold)
        self.last_exits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = torch.arange(x.shape[0])  # rows of the batch still running
        out = exits = None
        for i, (block, head) in enumerate(zip(self.model.blocks, self.model.heads)):
            x = block(x)
            logits = head(x)
            if out is None:
                out = logits.new_empty((len(active), logits.shape[-1]))
                exits = torch.empty(len(active), dtype=torch.int64)
            done = (confidence(logits) > self.threshold) if i < self.model.num_exits - 1 \
                else torch.ones(len(active), dtype=torch.bool)
            out[active[done]], exits[active[done]] = logits[done], i
            active, x = active[~done], x[~done]
            if len(active) == 0:
                break
        self.last_exits = exits
        return out


class _UpToExit(nn.Module):
    """The work of stopping at exit ``k``: every block up to ``k`` and every head up to ``k``
    (earlier heads run to test their confidence). Used to count FLOPs and time each path."""

    def __init__(self, model: EarlyExitNet, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, head in zip(self.model.blocks[: self.k + 1], self.model.heads[: self.k + 1]):
            x = block(x)
            logits = head(x)
        return logits


def exit_paths(model: EarlyExitNet) -> list[nn.Module]:
    """One module per exit that does exactly the work of an input leaving there (for the harness).

    Parameters
    ----------
    model
        An :class:`EarlyExitNet`.

    Returns
    -------
    list of nn.Module
        Module ``k`` runs blocks and heads ``0..k`` and returns exit ``k``'s logits.

    Raises
    ------
    TypeError
        If ``model`` is not an :class:`EarlyExitNet`.

    References
    ----------
    kaya2019shallow
    """
    _check_net(model)
    return [_UpToExit(model, k) for k in range(model.num_exits)]


def exit_costs(model: EarlyExitNet, input_shape: Sequence[int] = MNIST_SHAPE) -> list[int]:
    """FLOPs of one input that leaves at each exit (cumulative, heads on the way included).

    Parameters
    ----------
    model
        An :class:`EarlyExitNet`.
    input_shape
        The shape of one input, without the batch axis.

    Returns
    -------
    list of int
        FLOPs (:func:`nncompress.measure.count_flops`) of stopping at each exit, first exit first.

    Raises
    ------
    TypeError
        If ``model`` is not an :class:`EarlyExitNet`.

    References
    ----------
    kaya2019shallow
    """
    return [count_flops(path, input_shape) for path in exit_paths(model)]


def threshold_sweep(model: EarlyExitNet, x: torch.Tensor, y: torch.Tensor, thresholds: Sequence[float],
                    input_shape: Sequence[int] = MNIST_SHAPE) -> list[dict]:
    """Accuracy and average FLOPs per input on ``(x, y)`` for each confidence threshold.

    Parameters
    ----------
    model
        A trained :class:`EarlyExitNet`.
    x, y
        Inputs and labels (non-empty, of equal length).
    thresholds
        Numbers in [0, 1].
    input_shape
        The shape of one input, without the batch axis (for the exit costs).

    Returns
    -------
    list of dict
        One row per threshold: ``threshold``, ``accuracy``, ``flops`` (the mean over inputs of
        the cost of the exit each one takes) and ``fractions`` (the share of inputs leaving at
        each exit).

    Raises
    ------
    TypeError
        If ``model`` is not an :class:`EarlyExitNet`, or a threshold not a number.
    ValueError
        If ``x`` and ``y`` are empty or differ in length, or a threshold is outside [0, 1].

    References
    ----------
    teerapittayanon2016branchynet, kaya2019shallow
    """
    _check_net(model)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    for i, t in enumerate(thresholds):
        _check_threshold(t, f"thresholds[{i}]")
    costs = torch.tensor(exit_costs(model, input_shape), dtype=torch.float64)
    model.eval()
    with torch.inference_mode():
        logits = [torch.cat(parts) for parts in zip(*(model(x[i:i + 1000]) for i in range(0, len(x), 1000)))]
    rows = []
    for t in thresholds:
        pred, chosen = choose_exits(logits, t)
        fractions = torch.bincount(chosen, minlength=model.num_exits).double() / len(x)
        rows.append({"threshold": float(t), "accuracy": (pred == y).double().mean().item(),
                     "flops": float(fractions @ costs), "fractions": fractions.tolist()})
    return rows
