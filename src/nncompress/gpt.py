"""A decoder-only transformer language model, nanoGPT-sized: :class:`GPT` and its parts.

Re-exported by :mod:`nncompress.models`, the registry of the book's networks. The query, key,
value and output projections are separate ``nn.Linear`` layers, so that every technique of the
package selects them by name (:func:`gpt_layers`, :func:`gpt_blocks`, :func:`gpt_heads`). A test checks that the
model computes what Hugging Face's GPT-2 computes with the same weights.

References: radford2019language, karpathy2022nanogpt, vaswani2017attention
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from . import validate
from .layers import Heads

__all__ = ["GPTConfig", "CausalSelfAttention", "GPTBlock", "GPT", "gpt_layers", "gpt_blocks", "gpt_heads"]

@dataclass(frozen=True)
class GPTConfig:
    """The shape of a :class:`GPT`: a decoder-only transformer, nanoGPT-sized.

    Parameters
    ----------
    vocab_size
        Number of tokens (65 characters for Tiny Shakespeare).
    block_size
        The longest context, in tokens (learned positions exist for these many).
    n_layer, n_head, n_embd
        Depth, heads per layer and width (``n_embd`` divisible by ``n_head``).
    mlp_ratio
        The feed-forward block's hidden width, in multiples of ``n_embd`` (4, as GPT-2).
    dropout
        Dropout after attention, after the feed-forward block and on the embeddings, in training.
    tie_weights
        Share the token embedding with the output projection (GPT-2 does).

    References
    ----------
    radford2019language, karpathy2022nanogpt
    """
    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    mlp_ratio: int = 4
    dropout: float = 0.0
    tie_weights: bool = False

    def __post_init__(self):
        for name, low in (("vocab_size", 2), ("block_size", 1), ("n_layer", 1), ("n_head", 1), ("n_embd", 1),
                          ("mlp_ratio", 1)):
            validate.integer(getattr(self, name), name, low)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd must be divisible by n_head, got n_embd={self.n_embd}, n_head={self.n_head}")
        validate.fraction(self.dropout, "dropout")
        if not isinstance(self.tie_weights, bool):
            raise TypeError(f"tie_weights must be a bool, got {type(self.tie_weights).__name__}")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate query, key and value projections (``q``,
    ``k``, ``v``; each ``n_embd`` to ``n_embd``) and an output projection ``proj``, so that each
    matrix is an ``nn.Linear`` the package's techniques can select by name.

    With a cache (:class:`nncompress.text.KVCache`), the keys and values of the new tokens are
    appended to the cache's and the queries attend to everything cached so far.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.head_size = config.n_embd // config.n_head
        self.q, self.k, self.v, self.proj = (nn.Linear(config.n_embd, config.n_embd) for _ in range(4))
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (m(x).view(b, t, -1, self.head_size).transpose(1, 2) for m in (self.q, self.k, self.v))
        start = 0
        if cache is not None:
            start = cache.length(layer)
            k, v = cache.update(layer, k, v)
        p = self.dropout if self.training else 0.0
        if start == 0 or t == 1:  # a prefill, or one new token that may see every cached one
            y = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=t > 1)
        else:  # several new tokens after a cached prefix: token i sees the prefix and new tokens <= i
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, t, -1)
        return nn.functional.dropout(self.proj(y), p, self.training)


class GPTBlock(nn.Module):
    """A pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``; the
    feed-forward block is ``fc`` (to ``mlp_ratio * n_embd``), GELU, ``proj``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        hidden = config.mlp_ratio * config.n_embd
        self.mlp = nn.Sequential(OrderedDict(fc=nn.Linear(config.n_embd, hidden), gelu=nn.GELU(),
                                             proj=nn.Linear(hidden, config.n_embd)))
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + nn.functional.dropout(self.mlp(self.ln2(x)), self.dropout if self.training else 0.0, self.training)


class GPT(nn.Module):
    """A decoder-only transformer language model (GPT-2's architecture at nanoGPT's sizes).

    ``model(idx)`` maps token ids ``(batch, tokens)`` to next-token logits ``(batch, tokens,
    vocab_size)``; ``model(idx, cache)`` continues from the keys and values in ``cache`` (see
    :func:`nncompress.text.generate`). Modules: ``tok_emb``, ``pos_emb``, ``blocks.<i>`` (each
    ``ln1``, ``attn.{q,k,v,proj}``, ``ln2``, ``mlp.{fc,proj}``), ``ln_f`` and ``head``.
    Initialization follows GPT-2: normal(0, 0.02), and the projections that write into the
    residual stream scaled by ``1 / sqrt(2 * n_layer)``.

    Parameters
    ----------
    config
        The shape (:class:`GPTConfig`).

    References
    ----------
    radford2019language, karpathy2022nanogpt
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                scaled = name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight")
                nn.init.normal_(p, 0.0, 0.02 / (2 * config.n_layer) ** 0.5 if scaled else 0.02)

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
            raise TypeError(f"idx must be a (batch, tokens) tensor of int64 token ids, got "
                            f"{getattr(idx, 'dtype', type(idx).__name__)} of shape {tuple(getattr(idx, 'shape', ()))}")
        start = cache.length(0) if cache is not None else 0
        if start + idx.shape[1] > self.config.block_size:
            raise ValueError(f"the context is at most block_size={self.config.block_size} tokens, got "
                             f"{start} cached + {idx.shape[1]} new")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(start, start + idx.shape[1], device=idx.device))
        x = nn.functional.dropout(x, self.config.dropout if self.training else 0.0, self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        return self.head(self.ln_f(x))


def gpt_layers(model: GPT) -> list[str]:
    """The names of the weight matrices of a :class:`GPT`'s blocks, in data-flow order.

    Parameters
    ----------
    model
        A :class:`GPT`.

    Returns
    -------
    list of str
        ``blocks.<i>.attn.q``, ``.k``, ``.v``, ``.proj``, ``blocks.<i>.mlp.fc``, ``.proj`` for every
        block (the embeddings and the output ``head`` are left out, as the one-shot methods'
        papers leave them out).
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    return [f"blocks.{i}.{m}" for i in range(len(model.blocks))
            for m in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc", "mlp.proj")]


def gpt_blocks(model: GPT) -> list[list[str]]:
    """:func:`gpt_layers` grouped by block, in order: the ``groups`` of the one-shot methods.

    GPTQ, SparseGPT and Wanda calibrate each block on the outputs of the blocks already
    compressed (:func:`nncompress.calibration.layerwise_`).

    Parameters
    ----------
    model
        A :class:`GPT`.

    Returns
    -------
    list of list of str
        One list of six layer names per block.
    """
    layers = gpt_layers(model)
    return [layers[i:i + 6] for i in range(0, len(layers), 6)]


def gpt_heads(model: GPT) -> list[Heads]:
    """Where each block's attention heads live in a :class:`GPT` (see :class:`nncompress.layers.Heads`).

    Parameters
    ----------
    model
        A :class:`GPT`.

    Returns
    -------
    list of Heads
        One per block.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    return [Heads(f"blocks.{i}.attn.q", f"blocks.{i}.attn.k", f"blocks.{i}.attn.v", f"blocks.{i}.attn.proj",
                  block.attn.q.out_features // block.attn.head_size, block.attn.head_size)
            for i, block in enumerate(model.blocks)]
