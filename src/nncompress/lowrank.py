"""Low-rank factorization: truncated and data-aware SVD of Linear layers, CP and Tucker-2
decompositions of convolutions (through tensorly), and Kronecker-factored layers.

An ``m x n`` weight of rank ``r`` factors as ``W = A B`` with ``A`` of shape ``(m, r)`` and ``B``
of shape ``(r, n)``: ``r (m + n)`` numbers and multiply-adds per input instead of ``m n``. The
factorized layer saves parameters only below the break-even rank ``m n / (m + n)``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .layers import capture_features

__all__ = [
    "svd_factors", "truncation_error", "energy_rank", "break_even_rank",
    "LowRankLinear", "factorize_linear", "factorize", "layer_inputs",
    "cp_conv", "tucker2_conv", "tucker2_ranks", "decompose_convs",
    "kronecker_rearrange", "nearest_kronecker", "KroneckerLinear", "kronecker_linear",
]


# --------------------------------------------------------------------------- checks

def _check_matrix(weight: torch.Tensor, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{name} must be a 2-d tensor, got {getattr(weight, 'shape', type(weight))}")


def _check_rank(rank, largest: int, name: str = "rank") -> int:
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= largest:
        raise ValueError(f"{name} must be an int in [1, {largest}], got {rank!r}")
    return rank


def _check_energy(energy) -> float:
    if not isinstance(energy, (int, float)) or isinstance(energy, bool) or not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    return float(energy)


# --------------------------------------------------------------------------- level (a): matrices

def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep at least ``energy`` of ``sum(sigma^2)``."""
    _check_energy(energy)
    power = singular_values.double().pow(2)
    kept = power.cumsum(0) / power.sum()
    return min(int((kept < energy - 1e-12).sum()) + 1, len(singular_values))


def break_even_rank(m: int, n: int) -> int:
    """The largest rank at which ``r (m + n) < m n``: below it, factorizing saves parameters and FLOPs."""
    return (m * n - 1) // (m + n)


def truncation_error(singular_values: torch.Tensor, rank: int) -> float:
    """Frobenius error of the best rank-``rank`` approximation: ``sqrt(sum_{i > rank} sigma_i^2)`` (Eckart-Young).

    References: eckart1936approximation.
    """
    _check_rank(rank, len(singular_values))
    return float(singular_values[rank:].double().pow(2).sum().sqrt())


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A B`` the best rank-``rank`` approximation of ``weight`` (truncated SVD).

    ``A = U_r S_r^(1/2)`` of shape ``(m, rank)`` and ``B = S_r^(1/2) V_r^T`` of shape ``(rank, n)``;
    the singular values are split evenly so both factors have the same scale.

    References: eckart1936approximation, xue2013restructuring, denton2014exploiting.
    """
    _check_matrix(weight)
    _check_rank(rank, min(weight.shape))
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(weight.dtype), (root[:, None] * vh[:rank]).to(weight.dtype)


def _data_aware_factors(weight: torch.Tensor, inputs: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` ``(A, B)`` minimizing ``||(W - A B) X||_F`` over the rows ``X`` of ``inputs``.

    With the input second moment ``C = X^T X / N = Q diag(e) Q^T``, the problem becomes the
    truncated SVD of ``W Q diag(sqrt e)``; directions the data never excites (``e`` ~ 0) are
    dropped. References: chen2021drone.
    """
    x = inputs.detach().double().reshape(len(inputs), -1)  # (N, n)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"inputs must have {weight.shape[1]} features, got {x.shape[1]}")
    e, q = torch.linalg.eigh(x.T @ x / len(x))  # (n,), (n, n)
    keep = e > e.max() * 1e-10
    root = e[keep].sqrt()
    basis = q[:, keep]  # (n, k)
    u, s, vh = torch.linalg.svd(weight.detach().double() @ basis * root, full_matrices=False)
    rank = min(rank, len(s))
    a = u[:, :rank] * s[:rank].sqrt()
    b = (s[:rank].sqrt()[:, None] * vh[:rank]) / root @ basis.T
    return a.to(weight.dtype), b.to(weight.dtype)


# --------------------------------------------------------------------------- level (b): Linear

class LowRankLinear(nn.Module):
    """``y = up(down(x))``: a Linear layer whose ``(m, n)`` weight is the product of ``(m, r)`` and ``(r, n)``."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        (m, r), (r2, n) = a.shape, b.shape
        if r != r2:
            raise ValueError(f"factor shapes do not chain: {tuple(a.shape)} and {tuple(b.shape)}")
        self.down = nn.Linear(n, r, bias=False)
        self.up = nn.Linear(r, m, bias=bias is not None)
        with torch.no_grad():
            self.down.weight.copy_(b)
            self.up.weight.copy_(a)
            if bias is not None:
                self.up.bias.copy_(bias)

    @property
    def rank(self) -> int:
        return self.down.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The reconstructed ``(m, n)`` weight ``A B``."""
        return self.up.weight @ self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def factorize_linear(linear: nn.Linear, rank: int | None = None, energy: float | None = None,
                     inputs: torch.Tensor | None = None) -> LowRankLinear:
    """Factor ``linear`` into a :class:`LowRankLinear`, by ``rank`` or by retained ``energy``.

    With ``inputs`` (calibration inputs of this layer, shape ``(N, n)``), the factors minimize the
    output error ``||(W - A B) x||`` on them instead of the weight error (data-aware, as DRONE);
    ``energy`` then refers to the singular values of the plain weight.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank and energy")
    w = linear.weight.detach()
    if rank is None:
        rank = energy_rank(torch.linalg.svdvals(w.double()), energy)
    _check_rank(rank, min(w.shape))
    a, b = svd_factors(w, rank) if inputs is None else _data_aware_factors(w, inputs, rank)
    bias = None if linear.bias is None else linear.bias.detach()
    return LowRankLinear(a, b, bias)


@torch.no_grad()
def layer_inputs(model: nn.Module, x: torch.Tensor, layers: Sequence[str], batch_size: int = 1000
                 ) -> dict[str, torch.Tensor]:
    """The inputs each named layer receives when ``model`` runs on ``x`` (flattened to ``(N, features)``)."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with capture_features(model, layers, kind="input") as inputs, torch.no_grad():
        model.eval()
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])
            for name in layers:
                seen[name].append(inputs[name].flatten(1))
    return {name: torch.cat(values) for name, values in seen.items()}


def factorize(model: nn.Module, ranks: Mapping[str, int] | None = None, energy: float | None = None,
              layers: Sequence[str] | None = None, data: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` with Linear layers replaced by :class:`LowRankLinear` factorizations.

    Give per-layer ``ranks`` (``{"fc1": 64, ...}``) or one ``energy`` for ``layers`` (default: every
    Linear). With ``data`` (model inputs), each layer is factorized data-aware on the inputs it
    receives in the *original* model.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if ranks is not None and energy is not None:
        raise ValueError("give ranks or energy, not both")
    if ranks is None:
        if energy is None:
            raise ValueError("give ranks or energy")
        ranks = {name: None for name in (layers or linears)}
    unknown = [n for n in ranks if n not in linears]
    if unknown:
        raise ValueError(f"layers {unknown} are not Linear layers of the model; Linear layers: {list(linears)}")
    inputs = layer_inputs(model, data, list(ranks)) if data is not None else {}
    result = copy.deepcopy(model)
    for name, rank in ranks.items():
        new = factorize_linear(linears[name], rank, energy if rank is None else None, inputs.get(name))
        _replace(result, name, new)
    return result


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --------------------------------------------------------------------------- convolutions

def _check_conv(conv) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1 or conv.dilation != (1, 1) or not isinstance(conv.padding, tuple):
        raise ValueError("conv must have groups=1, dilation=1 and numeric padding")


def _tensorly_backend():
    import tensorly as tl
    return tl


def cp_conv(conv: nn.Conv2d, rank: int, random_state: int = 0, n_iter_max: int = 300) -> nn.Sequential:
    """Replace ``conv`` by four small convolutions from a rank-``rank`` CP decomposition of its kernel.

    ``K[o, i, h, w] ~ sum_r A[o, r] B[i, r] C[h, r] D[w, r]`` becomes a 1x1 conv ``Cin -> R``, a
    depthwise ``kh x 1`` conv, a depthwise ``1 x kw`` conv and a 1x1 conv ``R -> Cout`` (with the
    bias). The decomposition is tensorly's ``parafac`` (CP-ALS), seeded by ``random_state``.

    References: lebedev2015speeding, kolda2009tensor, kossaifi2019tensorly.
    """
    _check_conv(conv)
    _check_rank(rank, 10_000)
    tl = _tensorly_backend()
    from tensorly.decomposition import parafac
    kernel = conv.weight.detach().double()  # (Cout, Cin, kh, kw)
    with tl.backend_context("pytorch"), warnings.catch_warnings():
        # for rank > kh or kw, tensorly completes the SVD initialization randomly and says so
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        cp = parafac(kernel, rank, n_iter_max=n_iter_max, init="svd",
                     random_state=random_state, normalize_factors=True)
    weights, (a, b, c, d) = cp
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    cout, cin, kh, kw = kernel.shape
    layers = nn.Sequential(
        nn.Conv2d(cin, rank, 1, bias=False),
        nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), groups=rank, bias=False),
        nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), groups=rank, bias=False),
        nn.Conv2d(rank, cout, 1, bias=conv.bias is not None),
    )
    # spread each component's weight evenly over the four factors: with one factor carrying all of
    # it, the factors' scales differ by orders of magnitude and fine-tuning diverges
    root = weights.abs().pow(0.25)  # (R,)
    with torch.no_grad():
        layers[0].weight.copy_((b * root).T[:, :, None, None])  # (R, Cin, 1, 1)
        layers[1].weight.copy_((c * root).T[:, None, :, None])  # (R, 1, kh, 1)
        layers[2].weight.copy_((d * root).T[:, None, None, :])  # (R, 1, 1, kw)
        layers[3].weight.copy_((a * root * weights.sign())[:, :, None, None])  # (Cout, R, 1, 1)
        if conv.bias is not None:
            layers[3].bias.copy_(conv.bias)
    return layers


def tucker2_ranks(conv: nn.Conv2d, energy: float) -> tuple[int, int]:
    """Output and input channel ranks keeping ``energy`` of each channel unfolding's spectrum."""
    _check_conv(conv)
    k = conv.weight.detach().double()
    return (energy_rank(torch.linalg.svdvals(k.flatten(1)), energy),
            energy_rank(torch.linalg.svdvals(k.transpose(0, 1).flatten(1)), energy))


def tucker2_conv(conv: nn.Conv2d, ranks: tuple[int, int]) -> nn.Sequential:
    """Replace ``conv`` by 1x1 ``Cin -> r_in``, a ``kh x kw`` core conv ``r_in -> r_out``, and 1x1 ``r_out -> Cout``.

    The factors come from tensorly's ``partial_tucker`` of the kernel on its two channel modes:
    ``K ~ G x_0 U_out x_1 U_in`` (Tucker-2). ``ranks = (r_out, r_in)``.

    References: kim2016compression, tucker1966some, kossaifi2019tensorly.
    """
    _check_conv(conv)
    cout, cin, kh, kw = conv.weight.shape
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise ValueError(f"ranks must be a pair (r_out, r_in), got {ranks!r}")
    r_out, r_in = _check_rank(ranks[0], cout, "ranks[0]"), _check_rank(ranks[1], cin, "ranks[1]")
    tl = _tensorly_backend()
    from tensorly.decomposition import partial_tucker
    with tl.backend_context("pytorch"):
        (core, (u_out, u_in)), _ = partial_tucker(conv.weight.detach().double(), [r_out, r_in], modes=[0, 1],
                                                  init="svd", n_iter_max=100, tol=1e-8)
    layers = nn.Sequential(
        nn.Conv2d(cin, r_in, 1, bias=False),
        nn.Conv2d(r_in, r_out, (kh, kw), stride=conv.stride, padding=conv.padding, bias=False),
        nn.Conv2d(r_out, cout, 1, bias=conv.bias is not None),
    )
    with torch.no_grad():
        layers[0].weight.copy_(u_in.T[:, :, None, None])  # (r_in, Cin, 1, 1)
        layers[1].weight.copy_(core)  # (r_out, r_in, kh, kw)
        layers[2].weight.copy_(u_out[:, :, None, None])  # (Cout, r_out, 1, 1)
        if conv.bias is not None:
            layers[2].bias.copy_(conv.bias)
    return layers


def decompose_convs(model: nn.Module, method: str, ranks: Mapping[str, int | tuple[int, int]],
                    random_state: int = 0) -> nn.Module:
    """A copy of ``model`` with the named Conv2d layers replaced by ``"cp"`` or ``"tucker2"`` decompositions."""
    if method not in ("cp", "tucker2"):
        raise ValueError(f"method must be 'cp' or 'tucker2', got {method!r}")
    modules = dict(model.named_modules())
    result = copy.deepcopy(model)
    for name, rank in ranks.items():
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"{name!r} is not a Conv2d layer of the model")
        _replace(result, name, cp_conv(conv, rank, random_state) if method == "cp" else tucker2_conv(conv, rank))
    return result


# --------------------------------------------------------------------------- Kronecker

def _check_kron_shapes(weight_shape, shape_a, shape_b) -> None:
    (m, n), (m1, n1), (m2, n2) = weight_shape, shape_a, shape_b
    if m1 * m2 != m or n1 * n2 != n:
        raise ValueError(f"shape_a {tuple(shape_a)} and shape_b {tuple(shape_b)} do not factor a "
                         f"({m}, {n}) weight: need m1*m2 = {m} and n1*n2 = {n}")


def kronecker_rearrange(weight: torch.Tensor, shape_a: tuple[int, int], shape_b: tuple[int, int]) -> torch.Tensor:
    """Van Loan and Pitsianis' rearrangement ``R(W)``, of shape ``(m1 n1, m2 n2)``.

    Each ``m2 x n2`` block ``W_(p,i)`` of ``W`` becomes row ``p n1 + i``, so that
    ``R(A kron B) = vec(A) vec(B)^T``: Kronecker approximation becomes low-rank approximation.

    References: vanloan1993approximation.
    """
    _check_matrix(weight)
    _check_kron_shapes(weight.shape, shape_a, shape_b)
    (m1, n1), (m2, n2) = shape_a, shape_b
    return weight.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def nearest_kronecker(weight: torch.Tensor, shape_a: tuple[int, int], shape_b: tuple[int, int],
                      rank: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``A`` (``(rank, m1, n1)``) and ``B`` (``(rank, m2, n2)``) minimizing ``||W - sum_k A_k kron B_k||_F``.

    Solved exactly by the truncated SVD of :func:`kronecker_rearrange`; the error is the tail of
    its singular values.

    References: vanloan1993approximation, edalati2022kronecker.
    """
    r = kronecker_rearrange(weight.detach(), shape_a, shape_b)
    _check_rank(rank, min(r.shape))
    a, b = svd_factors(r, rank)  # (m1 n1, rank), (rank, m2 n2)
    return a.T.reshape(rank, *shape_a), b.reshape(rank, *shape_b)


class KroneckerLinear(nn.Module):
    """``y = (sum_k A_k kron B_k) x + bias`` computed as ``sum_k A_k X B_k^T``, never forming the Kronecker product.

    ``x`` of ``n1 n2`` features is viewed as an ``n1 x n2`` matrix ``X`` (row-major); the output
    ``m1 m2`` features are the row-major flattening of ``sum_k A_k X B_k^T``. Costs
    ``r n1 m2 (n2 + m1)`` multiply-adds per input (``X B_k^T``, then ``A_k`` times that) against
    ``m1 m2 n1 n2`` for the dense layer.

    References: edalati2022kronecker.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if a.dim() == 2:
            a, b = a[None], b[None]
        if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must be (rank, m1, n1) and (rank, m2, n2), got {tuple(a.shape)}, {tuple(b.shape)}")
        self.a = nn.Parameter(a.detach().clone())  # (r, m1, n1)
        self.b = nn.Parameter(b.detach().clone())  # (r, m2, n2)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.in_features = a.shape[2] * b.shape[2]
        self.out_features = a.shape[1] * b.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(m1 m2, n1 n2)`` weight ``sum_k A_k kron B_k`` (for checking; forward never builds it)."""
        return sum(torch.kron(a, b) for a, b in zip(self.a, self.b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, m1, n1 = self.a.shape
        _, m2, n2 = self.b.shape
        xm = x.reshape(-1, n1, n2)  # (batch, n1, n2)
        t = torch.matmul(xm.unsqueeze(1), self.b.transpose(1, 2))  # (batch, r, n1, m2)
        y = torch.matmul(self.a, t).sum(1)  # (batch, m1, m2)
        y = y.reshape(*x.shape[:-1], m1 * m2)
        return y if self.bias is None else y + self.bias


def kronecker_linear(linear: nn.Linear, shape_a: tuple[int, int], shape_b: tuple[int, int], rank: int = 1
                     ) -> KroneckerLinear:
    """The nearest rank-``rank`` Kronecker factorization of ``linear`` (see :func:`nearest_kronecker`)."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    a, b = nearest_kronecker(linear.weight, shape_a, shape_b, rank)
    return KroneckerLinear(a, b, None if linear.bias is None else linear.bias.detach())
