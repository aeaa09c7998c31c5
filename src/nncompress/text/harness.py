"""The harness's profile of sentence encoders (FLOPs at real lengths, latency on real sentences) and of
language models (loss, FLOPs per token, time per generated token).

References: blalock2020state, hoefler2015scientific
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

import torch
from torch import nn

from .. import validate
from ..flops import count_flops
from ..measure import count_nonzeros, count_params, serialized_bytes
from ..tables import Profile
from ..timing import measure_latencies, per_input_latencies
from .encoder import TokenizedPairs, _lengths, sts_spearman

__all__ = ["flops_per_sentence", "timing_sentences", "profile_encoders", "flops_per_token", "profile_gpts"]


def flops_per_sentence(encoder: nn.Module, ids: torch.Tensor, pad_id: int = 0) -> float:
    """Mean FLOPs of encoding one sentence, over the sentences ``ids`` (their real lengths).

    A transformer's FLOPs are a polynomial of degree at most 2 in the sentence length (linear
    layers grow with it, attention scores with its square). They are counted
    (:func:`nncompress.measure.count_flops`) on real sentences of three lengths, the quadratic
    through them is checked against a fourth, and the mean over ``ids`` follows from it. For an
    encoder whose FLOPs are not quadratic in the length (the check fails), every distinct length
    is counted instead.

    Parameters
    ----------
    encoder
        A sentence encoder.
    ids
        int64 ``(sentences, length)``, right-padded.
    pad_id
        The padding token's id.

    Returns
    -------
    float
        FLOPs per sentence, averaged over ``ids``.
    """
    validate.module(encoder, "encoder")
    validate.tensor(ids, "ids", dim=2)
    lengths = _lengths(ids, pad_id)
    distinct, counts = lengths.unique(return_counts=True)
    distinct, counts = distinct.tolist(), counts.tolist()
    row = {n: int((lengths == n).nonzero()[0]) for n in distinct}

    def flops(n: int) -> int:
        return count_flops(encoder, inputs=ids[row[n]:row[n] + 1, :n])

    if len(distinct) > 4:
        points = [distinct[0], distinct[len(distinct) // 2], distinct[-1]]
        values = [flops(n) for n in points]

        def quadratic(n: int) -> Fraction:  # Lagrange interpolation through the three counts, exactly
            total = Fraction(0)
            for i, (xi, yi) in enumerate(zip(points, values)):
                term = Fraction(yi)
                for j, xj in enumerate(points):
                    if j != i:
                        term *= Fraction(n - xj, xi - xj)
                total += term
            return total

        probe = distinct[len(distinct) // 4]
        if quadratic(probe) == flops(probe):
            return float(sum(count * quadratic(n) for n, count in zip(distinct, counts)) / len(ids))
    return sum(count * flops(n) for n, count in zip(distinct, counts)) / len(ids)


def timing_sentences(ids: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` sentences of ``ids`` drawn without replacement (seeded), in random order: what a server receives.

    Parameters
    ----------
    ids
        int64 ``(sentences, length)``, right-padded token ids.
    n
        How many to draw (an int in ``[1, len(ids)]``).
    seed
        Seed of the draw.

    Returns
    -------
    torch.Tensor
        ``(n, length)``: rows of ``ids``.
    """
    validate.tensor(ids, "ids", dim=2)
    n = validate.integer(n, "n", 1, len(ids))
    return ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))[:n]]


def profile_encoders(
    encoders: Mapping[str, nn.Module],
    pairs: TokenizedPairs,
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 1,
    nbytes: Mapping[str, int] | None = None,
    scores: Mapping[str, float] | None = None,
    counted_as: Mapping[str, nn.Module] | None = None,
    single: int = 64,
    min_run_time: float = 1.0,
    seed: int = 0,
) -> list[Profile]:
    """The harness's profile of sentence encoders, compared with each other (timed in turns).

    For each encoder: STS-B Spearman on ``pairs`` (:func:`sts_spearman`), parameters, non-zeros,
    serialized bytes (``torch.save`` of the state, or ``nbytes``), FLOPs per sentence at the
    length distribution of ``pairs`` (:func:`flops_per_sentence`) and latency. Batch 1 is the mean
    time per sentence over ``single`` sentences drawn from ``pairs`` and run one at a time
    (:func:`nncompress.measure.per_input_latencies`); a larger batch size is the time of one
    forward pass over that many drawn sentences, padded to their longest
    (:func:`nncompress.measure.measure_latencies`). Both use the same draw for every encoder.

    Parameters
    ----------
    encoders
        Names mapped to sentence encoders.
    pairs
        Tokenized pairs: the quality, the lengths and the timed sentences come from them.
    batch_sizes
        Batch sizes to time (ints >= 1).
    threads
        Intra-op threads for the timing.
    nbytes
        Names mapped to a custom size in bytes (e.g. a file's), replacing the state_dict's.
    scores
        Names mapped to an already measured Spearman, to skip re-encoding ``pairs`` (names of
        other encoders are ignored, so one mapping can serve several calls).
    counted_as
        Names mapped to a torch model whose parameters, non-zeros and FLOPs are counted instead:
        for an encoder that runs outside torch (:class:`nncompress.text.OnnxEncoder`).
    single
        Sentences timed one at a time for batch 1.
    min_run_time
        Seconds of timing per encoder for each larger batch size.
    seed
        Seed of the draw of timed sentences.

    Returns
    -------
    list of Profile
        One per encoder, in order, with ``metric="spearman"`` and ``score`` set.

    References
    ----------
    blalock2020state, hoefler2015scientific
    """
    validate.mapping(encoders, "encoders")
    if not encoders:
        raise ValueError("encoders must hold at least one encoder")
    nbytes, scores, counted_as = dict(nbytes or {}), dict(scores or {}), dict(counted_as or {})
    for argument, given in (("nbytes", nbytes), ("counted_as", counted_as)):
        unknown = sorted(set(given) - set(encoders))
        if unknown:
            raise ValueError(f"{argument} names encoders that are not in encoders: {unknown}")
    batch_sizes = tuple(validate.integer(b, "batch size", 1) for b in batch_sizes)
    threads = validate.integer(threads, "threads", 1)
    profiles = []
    for name, encoder in encoders.items():
        validate.module(encoder, f"encoders[{name!r}]")
        pad_id = getattr(encoder, "pad_id", 0)
        counted = validate.module(counted_as.get(name, encoder), f"counted_as[{name!r}]")
        profiles.append(Profile(
            name=name, accuracy=None, params=count_params(counted), nonzeros=count_nonzeros(counted),
            bytes=nbytes[name] if name in nbytes else serialized_bytes(encoder),
            flops=round(flops_per_sentence(counted, pairs.ids, pad_id)), threads=threads,
            bytes_source="custom" if name in nbytes else "state_dict",
            metric="spearman", score=scores[name] if name in scores else sts_spearman(encoder, pairs)))
    for b in batch_sizes:
        if b == 1:
            seconds = per_input_latencies(encoders, timing_sentences(pairs.ids, single, seed), threads)
        else:
            seconds = measure_latencies(encoders, b, threads=threads, min_run_time=min_run_time,
                                        inputs=timing_sentences(pairs.ids, b, seed))
        for p, name in zip(profiles, encoders):
            p.latency[b] = seconds[name]
    return profiles


def flops_per_token(model: nn.Module, context: int) -> float:
    """FLOPs per token of running ``model`` on a whole window of ``context`` tokens (training or
    scoring text, or a prefill), counted by :func:`nncompress.measure.count_flops`.

    Parameters
    ----------
    model
        A :class:`nncompress.models.GPT` (or any model over ``(1, context)`` token ids).
    context
        Tokens in the window (an int >= 1, at most the model's ``block_size``).

    Returns
    -------
    float
        FLOPs of the window divided by ``context``: two per weight of every Linear layer, plus
        attention's ``4 * width * context`` per layer (the causal mask's half included, as
        torch's attention computes it).
    """
    validate.module(model)
    context = validate.integer(context, "context", 1, getattr(getattr(model, "config", None), "block_size", None))
    return count_flops(model, inputs=torch.zeros(1, context, dtype=torch.long)) / context


def profile_gpts(models: Mapping[str, nn.Module], val: torch.Tensor, prompt: torch.Tensor, new_tokens: int = 64,
                 threads: int = 1, rounds: int = 3, nbytes: Mapping[str, int] | None = None,
                 scores: Mapping[str, float] | None = None, context: int | None = None) -> list[Profile]:
    """The harness's profile of language models, compared with each other (timed in turns).

    For each model: the validation loss (nats per token, :func:`nncompress.text.lm_loss`),
    parameters, non-zeros, serialized bytes, FLOPs per token over a full window
    (:func:`flops_per_token`) and, as ``latency[1]``, the seconds per new token of greedy
    decoding with the key-value cache at batch 1, after ``prompt`` (:func:`nncompress.text.generate`).

    Parameters
    ----------
    models
        Names mapped to :class:`nncompress.models.GPT` (or models with the same interface).
    val
        1-D validation token ids.
    prompt
        1-D token ids the timed generation starts from.
    new_tokens
        Tokens generated per timed call.
    threads, rounds
        As :func:`nncompress.measure.calls_in_turns`.
    nbytes, scores
        Names mapped to a custom size in bytes, or to an already measured loss.
    context
        The window of the FLOP count (default: the first model's ``block_size``).

    Returns
    -------
    list of Profile
        One per model, with ``metric="loss"`` (lower is better).

    References
    ----------
    blalock2020state, hoefler2015scientific
    """
    from ..timing import calls_in_turns
    from .charlm import lm_loss
    from .decoding import generate

    validate.mapping(models, "models")
    if not models:
        raise ValueError("models must hold at least one model")
    nbytes, scores = dict(nbytes or {}), dict(scores or {})
    for name, model in models.items():
        validate.module(model, f"models[{name!r}]").eval()
    context = context or next(iter(models.values())).config.block_size
    profiles = [Profile(name=name, accuracy=None, params=count_params(m), nonzeros=count_nonzeros(m),
                        bytes=nbytes[name] if name in nbytes else serialized_bytes(m),
                        flops=round(flops_per_token(m, context)), threads=threads,
                        bytes_source="custom" if name in nbytes else "state_dict", metric="loss",
                        score=scores[name] if name in scores else lm_loss(m, val))
                for name, m in models.items()]
    seconds = calls_in_turns({name: (lambda m=m: generate(m, prompt, new_tokens)) for name, m in models.items()},
                             threads, rounds)
    for p in profiles:
        p.latency[1] = seconds[p.name] / new_tokens
    return profiles
