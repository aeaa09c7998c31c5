"""Generating text with a GPT: the key-value cache, greedy and sampled decoding, speculative decoding.

A decoder computes each new token's keys and values once and keeps them: :class:`KVCache` holds
them, layer by layer, in float32 or quantized to 8 or 4 bits (one scale and zero point per token
and head, as KIVI and KVQuant quantize keys and values per token). :func:`generate` decodes one
token at a time, with or without the cache (the two give the same tokens); :func:`speculative_generate`
lets a small draft model propose ``k`` tokens that the large model checks in one pass, accepting
them by the rule of Leviathan et al. and Chen et al., which returns exactly the large model's
greedy tokens and, when sampling, tokens distributed exactly as the large model's own;
:func:`cached_passes` times the large model's check of drafted tokens on its own.

References: leviathan2023fast, chen2023accelerating, pope2023efficiently, hooper2024kvquant, liu2024kivi
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from ..quantization.affine import qrange

__all__ = ["KVCache", "generate", "speculative_accept", "speculative_generate", "SpeculativeStats", "cached_passes"]


class KVCache:
    """The keys and values of the tokens seen so far, for each layer of a :class:`nncompress.models.GPT`.

    ``bits=None`` keeps them in float32. With ``bits`` in 2 to 8, each new token's key and value
    vectors are quantized when stored: per token and per head, asymmetric, ``2**bits`` levels
    between the vector's minimum and maximum, with the scale and zero point kept in float16
    (the layout of KIVI's and KVQuant's per-token quantization). The attention reads the
    dequantized values. :meth:`nbytes` counts the bytes such a cache occupies, codes packed.

    Parameters
    ----------
    bits
        None for float32, or an int in [2, 8].
    """

    def __init__(self, bits: int | None = None):
        self.bits = None if bits is None else validate.integer(bits, "bits", 2, 8)
        self._store: dict[int, list] = {}  # layer -> [keys, values], each a tensor or (codes, scale, zero)

    def length(self, layer: int = 0) -> int:
        """The number of tokens cached in ``layer``."""
        if layer not in self._store:
            return 0
        keys = self._store[layer][0]
        return (keys[0] if isinstance(keys, tuple) else keys).shape[2]

    def _quantize(self, x: torch.Tensor) -> tuple:
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        qmax = qrange(self.bits)[1]
        scale = ((hi - lo) / qmax).clamp_min(1e-8).half()
        zero = lo.half()
        codes = torch.round((x - zero.float()) / scale.float()).clamp_(0, qmax).to(torch.uint8)
        return codes, scale, zero

    @staticmethod
    def _dequantize(stored: tuple) -> torch.Tensor:
        codes, scale, zero = stored
        return codes.float() * scale.float() + zero.float()

    def _append(self, old, new: torch.Tensor):
        new = self._quantize(new) if self.bits is not None else new
        if old is None:
            return new
        if isinstance(new, tuple):
            return tuple(torch.cat((a, b), 2) for a, b in zip(old, new))
        return torch.cat((old, new), 2)

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' ``keys`` and ``values`` (each ``(batch, heads, tokens, head_size)``)
        to ``layer``'s; return all of that layer's, as the attention reads them."""
        old = self._store.get(layer, [None, None])
        self._store[layer] = [self._append(old[0], keys), self._append(old[1], values)]
        if self.bits is None:
            return tuple(self._store[layer])
        return tuple(self._dequantize(s) for s in self._store[layer])

    def truncate(self, length: int) -> None:
        """Forget every token after the first ``length`` (speculative decoding's rejected tokens)."""
        length = validate.integer(length, "length", 0)
        for layer, pair in self._store.items():
            self._store[layer] = [tuple(t[:, :, :length] for t in s) if isinstance(s, tuple) else s[:, :, :length]
                                  for s in pair]

    def nbytes(self) -> int:
        """Bytes the cache occupies: float32 values, or ``bits``-bit codes packed plus float16 scales and zero points."""
        total = 0
        for pair in self._store.values():
            for s in pair:
                if isinstance(s, tuple):
                    codes, scale, zero = s
                    total += -(-codes.numel() * self.bits // 8) + 2 * (scale.numel() + zero.numel())
                else:
                    total += s.numel() * s.element_size()
        return total


def _check_prompt(model: nn.Module, prompt, name: str = "prompt") -> torch.Tensor:
    validate.module(model)
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.long or prompt.dim() != 1 or not len(prompt):
        raise TypeError(f"{name} must be a non-empty 1-D tensor of int64 token ids, got "
                        f"{getattr(prompt, 'dtype', type(prompt).__name__)} of shape {tuple(getattr(prompt, 'shape', ()))}")
    return prompt


def _next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """The next token from the last position's logits: the argmax, or a sample at ``temperature``."""
    if temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int, temperature: float = 0.0, seed: int = 0,
             cache: bool = True, kv_bits: int | None = None) -> torch.Tensor:
    """Continue ``prompt`` by ``new_tokens`` tokens, one at a time.

    Parameters
    ----------
    model
        A :class:`nncompress.models.GPT` (in eval mode).
    prompt
        1-D int64 token ids.
    new_tokens
        How many tokens to add (an int >= 1). With the cache, the prompt and the new tokens must
        fit in the model's context (``block_size``); without it, the model reads at most the last
        ``block_size`` tokens.
    temperature
        0 for greedy decoding (the most likely token), else sample from the softmax of the logits
        divided by ``temperature``.
    seed
        Seeds the sampling.
    cache
        Keep the keys and values (:class:`KVCache`), so that each step computes one token; without
        it, each step runs the model on the whole context again.
    kv_bits
        Quantize the cache to these many bits (None: float32).

    Returns
    -------
    Tensor
        The prompt followed by the new tokens, 1-D.
    """
    prompt = _check_prompt(model, prompt)
    new_tokens = validate.integer(new_tokens, "new_tokens", 1)
    temperature = validate.number(temperature, "temperature", 0.0)
    limit = model.config.block_size
    if cache and len(prompt) + new_tokens > limit:
        raise ValueError(f"with the cache, the prompt ({len(prompt)}) and new_tokens ({new_tokens}) must fit in "
                         f"block_size={limit}")
    generator = torch.Generator().manual_seed(validate.integer(seed, "seed", 0))
    kv = KVCache(kv_bits) if cache else None
    tokens = prompt.tolist()
    step = prompt[None]
    for _ in range(new_tokens):
        logits = model(step, kv) if cache else model(torch.tensor([tokens[-limit:]]))
        token = _next_token(logits[0, -1], temperature, generator)
        tokens.append(int(token))
        step = token.view(1, 1)
    return torch.tensor(tokens)


def cached_passes(model: nn.Module, context: torch.Tensor, fed: torch.Tensor, repeat: int = 20):
    """A timing call: ``repeat`` passes of ``model`` over ``fed`` after a cached ``context``.

    This is the large model's work in one round of speculative decoding: a pass over the
    ``k + 1`` tokens it checks, with the keys and values of everything before them in the cache.
    The context goes into a :class:`KVCache` once; every pass feeds ``fed`` and then truncates
    the cache back to the context, so each pass sees the same state. Timed for several lengths of
    ``fed`` (with :func:`nncompress.measure.calls_in_turns`), it gives the cost of a pass over
    ``k + 1`` tokens in one-token passes.

    Parameters
    ----------
    model
        A GPT with a key-value cache (:class:`nncompress.models.GPT`).
    context
        1-D int64 token ids already seen (at least one).
    fed
        1-D int64 token ids of one pass (at least one); ``len(context) + len(fed)`` must fit in
        the model's ``block_size``.
    repeat
        Passes per call (an int >= 1).

    Returns
    -------
    callable
        A function of no argument that runs the passes and returns the last pass's logits,
        ``(1, len(fed), vocab)``.

    Raises
    ------
    TypeError
        If ``context`` or ``fed`` is not a non-empty 1-D int64 tensor, or ``repeat`` not an int.
    ValueError
        If the two do not fit in the model's context, or ``repeat`` is below 1.
    """
    context, fed = _check_prompt(model, context, "context"), _check_prompt(model, fed, "fed")
    repeat = validate.integer(repeat, "repeat", 1)
    limit = model.config.block_size
    if len(context) + len(fed) > limit:
        raise ValueError(f"context and fed must fit in the model's block_size={limit}, "
                         f"got {len(context)} + {len(fed)} tokens")
    cache = KVCache()
    with torch.no_grad():
        model(context[None], cache)

    @torch.no_grad()
    def run() -> torch.Tensor:
        for _ in range(repeat):
            logits = model(fed[None], cache)
            cache.truncate(len(context))
        return logits
    return run


def speculative_accept(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor,
                       generator: torch.Generator | None = None) -> list[int]:
    """Speculative sampling's acceptance rule: which drafted tokens to keep, and the token after them.

    Drafted token ``x_i`` is kept with probability ``min(1, p_i(x_i) / q_i(x_i))``; at the first
    rejection, the token emitted instead is drawn from ``max(0, p_i - q_i)`` normalized, and
    nothing after it is kept; when all ``k`` are kept, one more token is drawn from ``p_k``. The
    emitted tokens are distributed exactly as tokens drawn from ``p`` one at a time (Leviathan et
    al., Theorem 1; Chen et al.). With one-hot ``p`` and ``q`` (greedy decoding) it keeps the
    drafted tokens while they equal the target's argmax, and then emits the target's argmax.

    Parameters
    ----------
    target_probs
        ``(k + 1, vocab)``: the large model's next-token distributions after the context and after
        each drafted token.
    draft_probs
        ``(k, vocab)``: the draft model's distributions from which ``draft_tokens`` were drawn.
    draft_tokens
        ``(k,)`` int64: the drafted tokens.
    generator
        The random numbers of the acceptance tests and draws.

    Returns
    -------
    list of int
        The accepted drafted tokens and the one token after them (1 to ``k + 1`` tokens).
    """
    k = validate.tensor(draft_tokens, "draft_tokens", dim=1).shape[0]
    validate.tensor(target_probs, "target_probs", dim=2, floating=True)
    validate.tensor(draft_probs, "draft_probs", dim=2, floating=True)
    if target_probs.shape[0] != k + 1 or draft_probs.shape != (k, target_probs.shape[1]):
        raise ValueError(f"target_probs must be (k + 1, vocab) and draft_probs (k, vocab) for k={k} drafted tokens, "
                         f"got {tuple(target_probs.shape)} and {tuple(draft_probs.shape)}")
    out = []
    for i, x in enumerate(draft_tokens.tolist()):
        p, q = target_probs[i, x], draft_probs[i, x]
        if q <= 0:
            raise ValueError(f"draft_tokens[{i}]={x} has probability 0 under draft_probs[{i}]")
        if torch.rand((), generator=generator) < p / q:
            out.append(x)
            continue
        residual = (target_probs[i] - draft_probs[i]).clamp_min(0)
        out.append(int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))
        return out
    return out + [int(torch.multinomial(target_probs[k], 1, generator=generator))]


@dataclass
class SpeculativeStats:
    """What speculative decoding did: target passes, drafted and accepted tokens."""

    target_calls: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_per_call: list = field(default_factory=list)

    @property
    def acceptance(self) -> float:
        """The share of drafted tokens kept."""
        return self.accepted / max(1, self.drafted)

    @property
    def tokens_per_call(self) -> float:
        """New tokens per pass of the large model (1 for plain decoding)."""
        return sum(n + 1 for n in self.accepted_per_call) / max(1, self.target_calls)


def _distributions(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Next-token distributions: softmax at ``temperature``, or one-hot argmax when it is 0 (greedy)."""
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return F.softmax(logits / temperature, -1)


def _draft(draft: nn.Module, cache: KVCache, tokens: list, k: int, temperature: float, generator
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``k`` tokens drafted after ``tokens`` (the cache holds a prefix of them) and their
    distributions (None when greedy: the distributions are one-hot at the tokens)."""
    step, drafted, probs = torch.tensor([tokens[cache.length():]]), [], []
    for _ in range(k):
        logits = draft(step, cache)[0, -1]
        if temperature == 0:
            token = logits.argmax().view(1)
        else:
            q = _distributions(logits, temperature)
            token = torch.multinomial(q, 1, generator=generator)
            probs.append(q)
        drafted.append(token)
        step = token.view(1, 1)
    return torch.cat(drafted), torch.stack(probs) if probs else None


def _greedy_accept(target_logits: torch.Tensor, drafted: list[int]) -> list[int]:
    """:func:`speculative_accept` for one-hot distributions: the drafted tokens while they are the
    target's argmax, then the target's argmax."""
    best = target_logits.argmax(-1).tolist()
    n = 0
    while n < len(drafted) and drafted[n] == best[n]:
        n += 1
    return drafted[:n] + [best[n]]


@torch.no_grad()
def speculative_generate(target: nn.Module, draft: nn.Module, prompt: torch.Tensor, new_tokens: int, k: int = 4,
                         temperature: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, SpeculativeStats]:
    """Continue ``prompt`` with ``target``'s tokens, ``k`` at a time drafted by ``draft``.

    Each round the draft proposes ``k`` tokens, one at a time (cheap: a small model); the target
    scores all of them in one pass with its cache and :func:`speculative_accept` keeps a prefix
    and adds one token of the target's. Both caches then forget the rejected tokens. Greedy
    (``temperature=0``) returns exactly :func:`generate`'s greedy tokens of ``target``; sampled,
    the tokens have exactly the target's distribution.

    Parameters
    ----------
    target, draft
        Two :class:`nncompress.models.GPT` over the same vocabulary, in eval mode.
    prompt
        1-D int64 token ids.
    new_tokens
        Tokens to add; the prompt, the new tokens and ``k`` must fit in both models' context.
    k
        Tokens drafted per round (an int >= 1).
    temperature, seed
        As :func:`generate`.

    Returns
    -------
    tuple
        ``(tokens, stats)``: the prompt and exactly ``new_tokens`` new tokens, and a
        :class:`SpeculativeStats`.
    """
    prompt = _check_prompt(target, prompt)
    validate.module(draft, "draft")
    new_tokens, k = validate.integer(new_tokens, "new_tokens", 1), validate.integer(k, "k", 1)
    temperature = validate.number(temperature, "temperature", 0.0)
    limit = min(target.config.block_size, draft.config.block_size)
    if len(prompt) + new_tokens + k > limit:
        raise ValueError(f"the prompt ({len(prompt)}), new_tokens ({new_tokens}) and k ({k}) must fit in the "
                         f"models' context of {limit} tokens")
    generator = torch.Generator().manual_seed(validate.integer(seed, "seed", 0))
    tokens, stats = prompt.tolist(), SpeculativeStats()
    target_cache, draft_cache = KVCache(), KVCache()
    while len(tokens) - len(prompt) < new_tokens:
        drafted, q = _draft(draft, draft_cache, tokens, k, temperature, generator)
        fed = torch.tensor([tokens[target_cache.length():] + drafted.tolist()])
        logits = target(fed, target_cache)[0, -(k + 1):]
        if temperature == 0:
            emitted = _greedy_accept(logits, drafted.tolist())
        else:
            emitted = speculative_accept(_distributions(logits, temperature), q, drafted, generator)
        stats.target_calls, stats.drafted, stats.accepted = stats.target_calls + 1, stats.drafted + k, \
            stats.accepted + len(emitted) - 1
        stats.accepted_per_call.append(len(emitted) - 1)
        tokens += emitted
        kept = len(tokens) - 1  # the last emitted token has not been through either model yet
        target_cache.truncate(kept)
        draft_cache.truncate(min(kept, draft_cache.length()))
    return torch.tensor(tokens[:len(prompt) + new_tokens]), stats
