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

import math
from collections.abc import Sequence

import torch
from torch import nn

from .measure import MNIST_SHAPE, count_flops

__all__ = ["EarlyExitNet", "early_exit_lenet", "exit_loss", "confidence", "choose_exits", "DynamicExit",
           "exit_paths", "exit_costs", "threshold_sweep"]


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


class EarlyExitNet(nn.Module):
    """``blocks[0] -> blocks[1] -> ...``, with ``heads[i]`` reading the output of ``blocks[i]``.

    ``forward`` returns the list of every exit's logits, first exit first; the last head is the
    ordinary classifier, so ``model(x)[-1]`` is the network without early exits.
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
    """
    c1, c2 = channels
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
    """A ``loss_fn`` for :func:`nncompress.train.fit`: the weighted sum of every exit's cross-entropy
    (equal weights by default), as BranchyNet trains its branches jointly."""
    if weights is not None and (len(weights) == 0 or any(not (w >= 0 and math.isfinite(w)) for w in weights)):
        raise ValueError(f"weights must be non-negative finite numbers, got {weights!r}")

    def loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        outputs = model(xb)
        w = weights if weights is not None else [1.0] * len(outputs)
        if len(w) != len(outputs):
            raise ValueError(f"got {len(w)} weights for {len(outputs)} exits")
        return sum(wi * nn.functional.cross_entropy(out, yb) for wi, out in zip(w, outputs))

    return loss


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """The largest softmax probability of each row of ``logits`` ``(batch, classes)``."""
    return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


def choose_exits(exit_logits: Sequence[torch.Tensor], threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The early-exit rule on precomputed logits: each input leaves at the first exit whose
    confidence is *above* ``threshold`` (in [0, 1]), or at the last exit.

    Returns ``(predictions, exit_index)``, both ``(batch,)`` int64. Threshold 0 sends every input
    out at the first exit; threshold 1 sends every input to the last.
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
    """

    def __init__(self, model: EarlyExitNet, threshold: float):
        super().__init__()
        if not isinstance(model, EarlyExitNet):
            raise TypeError(f"model must be an EarlyExitNet, got {type(model).__name__}")
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
    """One module per exit that does exactly the work of an input leaving there (for the harness)."""
    return [_UpToExit(model, k) for k in range(model.num_exits)]


def exit_costs(model: EarlyExitNet, input_shape: Sequence[int] = MNIST_SHAPE) -> list[int]:
    """FLOPs of one input that leaves at each exit (cumulative, heads on the way included)."""
    return [count_flops(path, input_shape) for path in exit_paths(model)]


def threshold_sweep(model: EarlyExitNet, x: torch.Tensor, y: torch.Tensor, thresholds: Sequence[float],
                    input_shape: Sequence[int] = MNIST_SHAPE) -> list[dict]:
    """Accuracy and average FLOPs per input on ``(x, y)`` for each confidence threshold.

    Each row holds ``threshold``, ``accuracy``, ``flops`` (the mean over inputs of the cost of the
    exit each one takes), and ``fractions`` (the share of inputs leaving at each exit).
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    for t in thresholds:
        _check_threshold(t)
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
