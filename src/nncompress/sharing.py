"""Parameter sharing: k-means weight clustering, HashedNets, tied weights, and the compressed
file format of the Deep Compression pipeline.

Level (a): :func:`init_centroids` and :func:`kmeans` cluster the weights of a layer (1-d
Lloyd iterations); :func:`hash_indices` is HashedNets' deterministic index and sign hash.

Level (b): :class:`SharedWeight` is a parametrization ``weight = codebook[codes]`` (pruned
entries stay zero), applied by :func:`apply_sharing` and removed by :func:`bake`. Because the
weight is an indexing of the codebook, autograd gives each centroid the *sum* of its members'
gradients, which is exactly Deep Compression's centroid fine-tuning. :class:`HashedLinear` stores
only its buckets; :func:`tie_weights` makes layers share one weight.

:func:`save` writes a shared (and possibly pruned) model as a real file: codebooks, relative
indices and codes, Huffman-coded, with a SHA-256 checksum; :func:`load` restores it bitwise and
rejects a truncated or corrupted file.

References: han2016deep, gong2014compressing, chen2015compressing, lloyd1982least, lan2020albert
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import coding
from .parametrizations import own_class

__all__ = [
    "INITS", "init_centroids", "kmeans", "SharedWeight", "apply_sharing", "shared_layers", "bake",
    "hash_indices", "HashedLinear", "BUDGET_METHODS", "budget_mlp", "tie_weights", "save", "load", "file_bytes", "code_streams", "CorruptFileError",
]

INITS = ("linear", "density", "random")


# --------------------------------------------------------------------------- level (a): clustering

def _check_values(values: torch.Tensor) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise TypeError(f"values must be a floating-point tensor, got {type(values).__name__}")
    flat = values.detach().reshape(-1)
    if flat.numel() == 0 or not torch.isfinite(flat).all():
        raise ValueError("values must be non-empty and finite")
    return flat


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (the number of values), got {k!r}")
    return k


def init_centroids(values: torch.Tensor, k: int, method: str = "linear",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` initial centroids for :func:`kmeans`, as Han et al. compare them.

    - ``"linear"``: evenly spaced between the smallest and largest value;
    - ``"density"``: evenly spaced in the cumulative distribution (quantiles at ``(i + 1/2) / k``),
      so that dense regions get more centroids;
    - ``"random"`` (Forgy): ``k`` distinct values drawn at random from the data.

    References: han2016deep
    """
    flat = _check_values(values)
    k = _check_k(k, flat.numel())
    if method == "linear":
        return torch.linspace(float(flat.min()), float(flat.max()), k, dtype=flat.dtype)
    if method == "density":
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return torch.quantile(flat.double(), levels).to(flat.dtype)
    if method == "random":
        return flat[torch.randperm(flat.numel(), generator=generator)[:k]].sort().values
    raise ValueError(f"method must be one of {INITS}, got {method!r}")


def _assign(flat: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value (1-d: a binary search between midpoints)."""
    order = centroids.argsort()
    ordered = centroids[order]
    midpoints = (ordered[1:] + ordered[:-1]) / 2
    return order[torch.searchsorted(midpoints, flat.contiguous())]


def kmeans(values: torch.Tensor, k: int, init: str | torch.Tensor = "linear", iterations: int = 100,
           tol: float = 0.0, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's algorithm on the scalars of ``values``: ``(centroids (k,), labels (n,), inertia)``.

    ``init`` is a method of :func:`init_centroids` or a tensor of ``k`` starting centroids.
    Iterates until no centroid moves by more than ``tol`` or ``iterations`` is reached. A centroid
    that loses all its members is moved to one of the values farthest from their centroids, as
    scikit-learn does, so that no shared value is wasted. ``inertia`` is the sum of squared
    distances of the values to their centroids.

    References: lloyd1982least, han2016deep
    """
    flat = _check_values(values).double()
    if isinstance(init, torch.Tensor):
        centroids = init.detach().reshape(-1).double().clone()
        _check_k(len(centroids), flat.numel())
    else:
        centroids = init_centroids(flat, k, init, generator).double()
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    k = len(centroids)
    labels = _assign(flat, centroids)
    for _ in range(iterations):
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, flat)
        counts = torch.bincount(labels, minlength=k)
        empty = (counts == 0).nonzero().reshape(-1)
        if len(empty):  # move each empty centroid to one of the values farthest from its centroid
            far = (flat - centroids[labels]).abs().topk(min(len(empty), len(flat))).indices
            empty = empty[:len(far)]
            sums.index_add_(0, labels[far], -flat[far])
            counts.index_add_(0, labels[far], -torch.ones_like(far))
            sums[empty], counts[empty] = flat[far], 1
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        moved = float((updated - centroids).abs().max())
        centroids = updated
        labels = _assign(flat, centroids)
        if moved <= tol:
            break
    inertia = float((flat - centroids[labels]).pow(2).sum())
    return centroids.to(values.dtype), labels, inertia


# --------------------------------------------------------------------------- level (b): shared layers

class SharedWeight(nn.Module):
    """Parametrization ``weight = where(mask, codebook[codes], 0)``: a layer with shared weights.

    ``codebook`` is a trainable ``(k,)`` Parameter; ``codes`` (int64) and ``mask`` (bool) are
    buffers of the weight's shape. Gradients reach the codebook through the indexing, so each
    centroid receives the sum of its members' gradients.

    References: han2016deep
    """

    def __init__(self, codebook: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        if codes.shape != mask.shape:
            raise ValueError(f"codes and mask must have the same shape, got {tuple(codes.shape)} and {tuple(mask.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= len(codebook)):
            raise ValueError(f"codes must lie in [0, {len(codebook) - 1}]")
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.register_buffer("codes", codes.to(torch.int64))
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:  # the original weight is not used
        return torch.where(self.mask, self.codebook[self.codes], torch.zeros((), dtype=self.codebook.dtype))


def _layers(model: nn.Module, layers: Iterable[str] | None) -> dict[str, nn.Module]:
    found = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    if layers is None:
        return found
    layers = list(layers)
    missing = [n for n in layers if n not in found]
    if missing:
        raise ValueError(f"layers {missing} are not Linear or Conv2d layers of the model; it has {list(found)}")
    return {n: found[n] for n in layers}


def _check_bits(bits, name: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"{name} must be an int in [1, 16], got {bits!r}")
    return bits


def apply_sharing(model: nn.Module, bits: int | Mapping[str, int], init: str = "linear",
                  layers: Iterable[str] | None = None, iterations: int = 100, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose layers share ``2**bits`` weights each, found by :func:`kmeans`.

    ``bits`` is one width for every layer or ``{layer: bits}``. Only non-zero weights are
    clustered; zeros (pruned weights) stay zero and keep no code, as in Deep Compression, where
    sharing follows pruning. A layer with fewer non-zeros than ``2**bits`` gets one centroid per
    non-zero. The model must not carry other parametrizations (bake pruning masks first).

    References: han2016deep
    """
    chosen = _layers(model, layers if not isinstance(bits, Mapping) else (layers or list(bits)))
    widths = {n: _check_bits(bits[n] if isinstance(bits, Mapping) else bits, f"bits for {n}") for n in chosen}
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    for name, width in widths.items():
        layer = modules[name]
        if parametrize.is_parametrized(layer):
            raise ValueError(f"layer {name} is already parametrized; bake it first")
        own_class(layer)
        weight = layer.weight.detach()
        mask = weight != 0
        alive = weight[mask]
        if alive.numel() == 0:
            raise ValueError(f"layer {name} has no non-zero weight to share")
        k = min(1 << width, alive.numel())
        centroids, labels, _ = kmeans(alive, k, init, iterations, generator=generator)
        codes = torch.zeros(weight.shape, dtype=torch.int64)
        codes[mask] = labels
        parametrize.register_parametrization(layer, "weight", SharedWeight(centroids, codes, mask))
    return model


def shared_layers(model: nn.Module) -> dict[str, SharedWeight]:
    """The :class:`SharedWeight` parametrization of every shared layer, by layer name."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations["weight"]:
                if isinstance(p, SharedWeight):
                    out[name] = p
    return out


def bake(model: nn.Module) -> nn.Module:
    """Replace shared weights by plain weights with the same values, in place; returns ``model``."""
    modules = dict(model.named_modules())
    for name in shared_layers(model):
        own_class(modules[name])
        parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=True)
    return model


# --------------------------------------------------------------------------- HashedNets

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on uint64 arrays: a fast, well-mixed, deterministic hash."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_indices(shape: Sequence[int], buckets: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """HashedNets' hashes for a virtual weight of ``shape``: bucket indices and signs.

    Entry ``(i, j)`` reads bucket ``h(i, j) mod buckets`` with sign ``xi(i, j)`` in ``{-1, +1}``;
    both come from splitmix64 of the entry's flat position and ``seed``, so they are recomputed,
    never stored. Returns ``(index (int64), sign (float32))``, both of ``shape``.

    References: chen2015compressing
    """
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets must be a positive int, got {buckets!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    n = int(np.prod(shape))
    keys = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x100000000)
    h = _splitmix64(keys)
    index = (h % np.uint64(buckets)).astype(np.int64)
    sign = np.where(_splitmix64(h) >> np.uint64(63), 1.0, -1.0).astype(np.float32)
    return torch.from_numpy(index).reshape(tuple(shape)), torch.from_numpy(sign).reshape(tuple(shape))


class _HashedGather(torch.autograd.Function):
    """``sign * weight[index]``, whose backward adds each entry's gradient into its bucket with
    ``index_add_``: the same gradient as autograd's indexing, about three times faster on CPU."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, index: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index, sign)
        ctx.buckets = weight.shape[0]
        return sign * weight[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index, sign = ctx.saved_tensors
        flat = (grad * sign).reshape(-1)
        return torch.zeros(ctx.buckets, dtype=grad.dtype).index_add_(0, index.reshape(-1), flat), None, None


class HashedLinear(nn.Module):
    """A Linear layer whose ``(out, in)`` virtual weight is hashed into ``buckets`` shared values.

    ``W[i, j] = sign(i, j) * weight[index(i, j)]`` with the hashes of :func:`hash_indices`. Only
    ``weight`` (``buckets`` values) and the bias are parameters and appear in the state dict; the
    index and sign are recomputed from ``seed``.

    References: chen2015compressing
    """

    def __init__(self, in_features: int, out_features: int, buckets: int, bias: bool = True, seed: int = 0):
        super().__init__()
        self.in_features, self.out_features, self.buckets, self.seed = in_features, out_features, buckets, seed
        index, sign = hash_indices((out_features, in_features), buckets, seed)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("sign", sign, persistent=False)
        bound = in_features ** -0.5  # nn.Linear's default initialization range
        self.weight = nn.Parameter(torch.empty(buckets).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def virtual_weight(self) -> torch.Tensor:
        """The ``(out, in)`` weight ``sign * weight[index]``; its gradient sums into the buckets."""
        return _HashedGather.apply(self.weight, self.index, self.sign.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.virtual_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, buckets={self.buckets}, seed={self.seed}"


BUDGET_METHODS = ("dense", "hashed", "lowrank", "random_edges", "small")


def budget_mlp(method: str, factor: float = 1.0, hidden: int = 1000, seed: int = 0) -> nn.Module:
    """An untrained ``784 -> hidden -> 10`` ReLU MLP whose weights fit ``factor`` of the dense
    network's, built the way Chen et al. compare HashedNets with other compressions:

    - ``"dense"``: the full network (``factor`` is ignored);
    - ``"hashed"``: both layers are :class:`HashedLinear` with ``round(factor * in * out)`` buckets;
    - ``"lowrank"``: both layers are products of two factors (``lowrank.LowRankLinear``) of one
      rank, the largest that fits the budget (at least 1). A rank below 10 in the output layer is a
      bottleneck of its own, so a rank per layer in proportion to its size would starve it;
    - ``"random_edges"``: each layer keeps ``round(factor * in * out)`` randomly chosen weights
      (fixed pruning masks, ``pruning.apply_masks``), trained as usual;
    - ``"small"``: a dense network whose hidden layer is narrowed to fit the budget.

    Biases (at most ``hidden + 10``) are not counted in the budget. The model is built from a
    fixed seed: the same arguments give the same initial weights and hashes.

    References: chen2015compressing
    """
    from . import lowrank, pruning
    from .models import MLP

    if method not in BUDGET_METHODS:
        raise ValueError(f"method must be one of {BUDGET_METHODS}, got {method!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise ValueError(f"factor must be a number in (0, 1], got {factor!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive int, got {hidden!r}")
    generator = torch.manual_seed(seed)
    sizes = [(784, hidden), (hidden, 10)]  # (in, out) of fc1 and fc2
    if method == "small":
        return MLP((max(1, int(factor * hidden)),))
    model = MLP((hidden,))
    if method == "dense":
        return model
    rank_for_all = max(1, int(factor * sum(i * o for i, o in sizes) // sum(i + o for i, o in sizes)))
    for i, (n_in, n_out) in enumerate(sizes, start=1):
        share = factor * n_in * n_out  # this layer's part of the budget
        if method == "hashed":
            layer = HashedLinear(n_in, n_out, max(1, round(share)), seed=seed + i)
        elif method == "lowrank":
            rank = rank_for_all
            layer = lowrank.LowRankLinear(torch.empty(n_out, rank), torch.empty(rank, n_in), torch.empty(n_out))
            layer.down.reset_parameters(), layer.up.reset_parameters()
        else:
            keep = torch.randperm(n_in * n_out, generator=generator)[: max(1, round(share))]
            mask = torch.zeros(n_out * n_in, dtype=torch.bool)
            mask[keep] = True
            pruning.apply_masks(model, {f"fc{i}.weight": mask.reshape(n_out, n_in)})
            continue
        setattr(model, f"fc{i}", layer)
    return model


def tie_weights(model: nn.Module, layers: Sequence[str]) -> nn.Module:
    """Make the named layers share the first one's weight Parameter, in place (cross-layer sharing).

    All must have the same weight shape. Their biases stay separate. Returns ``model``.

    References: lan2020albert
    """
    modules = dict(model.named_modules())
    if len(layers) < 2 or any(n not in modules or not hasattr(modules[n], "weight") for n in layers):
        raise ValueError(f"layers must name at least two layers with a weight, got {list(layers)}")
    first = modules[layers[0]].weight
    for name in layers[1:]:
        if modules[name].weight.shape != first.shape:
            raise ValueError(f"layer {name}'s weight {tuple(modules[name].weight.shape)} does not match "
                             f"{layers[0]}'s {tuple(first.shape)}")
        modules[name].weight = first
    return model


# --------------------------------------------------------------------------- the compressed file

MAGIC, VERSION = b"NNCZ", 1


class CorruptFileError(ValueError):
    """A compressed-model file is truncated, corrupted, or not a compressed-model file."""


class _Blobs:
    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> list[int]:
        self.parts.append(data)
        self.size += len(data)
        return [self.size - len(data), len(data)]


def _encode_stream(symbols: torch.Tensor, bits: int, huffman: bool, blobs: _Blobs) -> dict:
    if huffman and symbols.numel():
        code = coding.HuffmanCode.from_symbols(symbols)
        data, nbits = code.encode(symbols)
        table = np.zeros(max(code.lengths) + 1, dtype=np.uint8)  # canonical code: the lengths suffice
        table[list(code.lengths)] = list(code.lengths.values())
        return {"huffman": blobs.add(table.tobytes()), "blob": blobs.add(data)}
    return {"bits": bits, "blob": blobs.add(coding.pack_bits(symbols, bits).numpy().tobytes())}


def _decode_stream(entry: dict, count: int, payload: bytes) -> torch.Tensor:
    start, length = entry["blob"]
    data = payload[start:start + length]
    if "huffman" in entry:
        start, length = entry["huffman"]
        table = payload[start:start + length]  # one code length per symbol, 0 for absent symbols
        return coding.HuffmanCode({s: n for s, n in enumerate(table) if n}).decode(data, count)
    packed = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    return coding.unpack_bits(packed, entry["bits"], count)


def _sparse_entry(gaps: torch.Tensor, values: torch.Tensor, index_bits: int, value_bits: int, huffman: bool,
                  blobs: _Blobs) -> dict:
    return {"index_bits": index_bits, "entries": len(values),
            "gaps": _encode_stream(gaps, index_bits, huffman, blobs),
            "values": _encode_stream(values, value_bits, huffman, blobs)}


def _shared_streams(p: SharedWeight, index_bits: int) -> dict[str, torch.Tensor]:
    """The symbol streams :func:`save` writes for one shared layer: ``{"codes"}`` when nothing is
    pruned, else relative-index ``{"gaps", "values"}``, where value 0 is a filler or pruned entry
    and value ``c + 1`` is centroid ``c``."""
    if bool(p.mask.all()):
        return {"codes": p.codes.reshape(-1)}
    flat = torch.where(p.mask, p.codes + 1, torch.zeros((), dtype=torch.int64)).reshape(-1)
    gaps, values = coding.relative_encode(flat, index_bits)
    return {"gaps": gaps, "values": values}


def code_streams(model: nn.Module, index_bits: int = 5) -> dict[str, dict[str, torch.Tensor]]:
    """The integer symbol streams that :func:`save` codes for each shared layer of ``model``, by
    layer name: ``{"codes": ...}`` for a layer without pruned weights, else ``{"gaps": ...,
    "values": ...}`` (Deep Compression's relative indices). Use it to compare a stream's entropy
    with its Huffman code's mean length."""
    index_bits = _check_bits(index_bits, "index_bits")
    return {name: _shared_streams(p, index_bits) for name, p in shared_layers(model).items()}


def save(model: nn.Module, path: str | os.PathLike, index_bits: int = 5, huffman: bool = True) -> int:
    """Write ``model`` as a compressed file; return the file's size in bytes.

    - A shared layer's weight (see :func:`apply_sharing`) is stored as its float32 codebook plus
      one code per non-zero, in Deep Compression's relative-index form (:func:`coding.relative_encode`
      with ``index_bits``-bit gaps and filler zeros); a shared layer without zeros needs no indices
      and stores one code per weight.
    - Any other float tensor that is at least half zeros (a pruned weight) is stored the same way,
      with its non-zero values kept as float32.
    - Everything else is stored raw.

    With ``huffman`` the gap and code streams are Huffman-coded (:class:`coding.HuffmanCode`),
    each preceded by its canonical code's table of lengths (one byte per symbol up to the largest),
    otherwise bit-packed at fixed width. The file is ``MAGIC, version, header length, JSON
    header, payload, SHA-256 of all that precedes``: every byte of it, headers and codebooks
    included, counts in the returned size.

    References: han2016deep
    """
    index_bits = _check_bits(index_bits, "index_bits")
    shared = shared_layers(model)
    plain = bake(copy.deepcopy(model)).state_dict()
    blobs, tensors = _Blobs(), []
    for key, tensor in plain.items():
        entry = {"name": key, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        layer = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and layer in shared:
            p = shared[layer]
            k = len(p.codebook)
            streams = _shared_streams(p, index_bits)
            entry |= {"kind": "shared", "codebook": blobs.add(p.codebook.detach().float().numpy().tobytes())}
            if "codes" in streams:  # no pruned weight: one code per weight, no indices
                entry |= {"dense": _encode_stream(streams["codes"], max(1, (k - 1).bit_length()), huffman, blobs)}
            else:
                entry |= _sparse_entry(streams["gaps"], streams["values"], index_bits, max(1, int(k).bit_length()),
                                       huffman, blobs)
        elif tensor.is_floating_point() and tensor.numel() >= 16 and (tensor == 0).float().mean() >= 0.5:
            flat = tensor.reshape(-1)
            alive = flat != 0
            entry |= {"kind": "sparse", "values_raw": blobs.add(flat[alive].float().numpy().tobytes())}
            entry |= _sparse_entry(*coding.relative_encode(alive.to(torch.int64), index_bits), index_bits, 1, huffman,
                                   blobs)
        else:
            entry |= {"kind": "raw", "blob": blobs.add(tensor.contiguous().numpy().tobytes())}
        tensors.append(entry)
    header = json.dumps({"tensors": tensors}, separators=(",", ":")).encode()
    body = MAGIC + bytes([VERSION]) + struct.pack("<I", len(header)) + header + b"".join(blobs.parts)
    data = body + hashlib.sha256(body).digest()
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def file_bytes(model: nn.Module, index_bits: int = 5, huffman: bool = True) -> int:
    """The size in bytes of the file :func:`save` writes for ``model`` (written to a temporary
    folder and removed): pass it as ``nbytes`` to :func:`nncompress.measure.profile`."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return save(model, os.path.join(folder, "model.nncz"), index_bits=index_bits, huffman=huffman)


def _read_checked(path: str | os.PathLike) -> tuple[dict, bytes]:
    data = open(path, "rb").read()
    if len(data) < 4 + 1 + 4 + 32 or data[:4] != MAGIC:
        raise CorruptFileError(f"{path}: not a compressed-model file (too short or wrong magic number)")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptFileError(f"{path}: checksum mismatch: the file is truncated or corrupted")
    if body[4] != VERSION:
        raise CorruptFileError(f"{path}: unsupported format version {body[4]}")
    (n,) = struct.unpack("<I", body[5:9])
    header = json.loads(body[9:9 + n])
    return header, body[9 + n:]


def _tensor(data: bytes, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    array = np.frombuffer(data, dtype=np.dtype(dtype)).copy()
    return torch.from_numpy(array).reshape(tuple(shape))


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Fill ``model`` (a fresh instance of the saved architecture) from the file ``path``; return it.

    The restored weights are bitwise those of the saved model. The whole file is checked (magic
    number, SHA-256) before anything is loaded: a truncated or corrupted file raises
    :class:`CorruptFileError` and leaves ``model`` untouched.
    """
    header, payload = _read_checked(path)
    state = {}
    for entry in header["tensors"]:
        shape, n = entry["shape"], int(np.prod(entry["shape"]))
        if entry["kind"] == "raw":
            start, length = entry["blob"]
            state[entry["name"]] = _tensor(payload[start:start + length], entry["dtype"], shape)
            continue
        if "dense" in entry:
            start, length = entry["codebook"]
            codebook = _tensor(payload[start:start + length], "float32", [-1])
            state[entry["name"]] = codebook[_decode_stream(entry["dense"], n, payload)].reshape(shape)
            continue
        gaps = _decode_stream(entry["gaps"], entry["entries"], payload)
        values = _decode_stream(entry["values"], entry["entries"], payload)
        flat = coding.relative_decode(gaps, values, n)
        if entry["kind"] == "shared":
            start, length = entry["codebook"]
            codebook = _tensor(payload[start:start + length], "float32", [-1])
            weight = torch.where(flat > 0, codebook[(flat - 1).clamp_min(0)], torch.zeros(()))
        else:
            start, length = entry["values_raw"]
            weight = torch.zeros(n)
            weight[flat > 0] = _tensor(payload[start:start + length], "float32", [-1])
        state[entry["name"]] = weight.reshape(shape)
    model.load_state_dict(state)
    return model
