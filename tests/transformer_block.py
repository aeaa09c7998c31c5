"""A small pre-LayerNorm transformer block built from nn.Linear layers, for testing that every
technique works on a model that is not a chain: separate q/k/v/output projections, a two-layer
feed-forward network, LayerNorms and residual connections."""

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v`` and ``o`` projections."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))  # (b, heads, t, d / heads)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, d))  # (b, t, d)


class FeedForward(nn.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class Block(nn.Module):
    """``x + attn(ln1(x))``, then ``x + ffn(ln2(x))``; inputs and outputs ``(batch, tokens, width)``."""

    def __init__(self, width: int = 32, heads: int = 4, hidden: int = 64):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.ffn = FeedForward(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


LINEARS = ["attn.q", "attn.k", "attn.v", "attn.o", "ffn.fc1", "ffn.fc2"]


def block(seed: int = 0) -> Block:
    """A block with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return Block().eval()


def tokens(n: int = 64, length: int = 10, seed: int = 1) -> torch.Tensor:
    """``n`` seeded random sequences of ``length`` tokens: ``(n, length, 32)``."""
    return torch.randn(n, length, 32, generator=torch.Generator().manual_seed(seed))
