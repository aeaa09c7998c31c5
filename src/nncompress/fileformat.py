"""The compressed file format (NNCZ): Deep Compression's storage of a pruned, shared model.

:func:`save` writes any model as a real file. A shared weight (:class:`~nncompress.sharing.
SharedWeight`) is stored as its codebook and one code per non-zero weight; a float tensor that
is mostly zeros (a pruned weight) as its non-zero values; both with Deep Compression's relative
indices (:func:`nncompress.coding.relative_encode`), and their integer streams Huffman-coded or
bit-packed. Everything else is stored raw. Float values keep their type, or become float16 on
request. :func:`load` restores the weights bitwise into a fresh instance of the architecture,
after checking a SHA-256 checksum of the whole file, so a truncated or corrupted file is
rejected before anything is loaded.

Layout: ``MAGIC (4 bytes), VERSION (1 byte), header length (uint32, little-endian), header
(zlib-compressed JSON), payload, SHA-256 of all that precedes (32 bytes)``. The header lists
every tensor of the state dict with its name, shape, dtype, kind (``raw``, ``shared`` or
``sparse``), the ``[offset, length]`` of its blobs in the payload, and for a Huffman-coded
stream its canonical code's lengths. The relative indices' width is chosen per tensor, either
fixed (Deep Compression used 5 bits for fully connected layers and 8 for convolutions) or, with
``index_bits="auto"``, the width that makes that tensor's streams smallest.

References: han2016deep, huffman1952method
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from . import coding, parametrizations, validate
from .sharing import SharedWeight

__all__ = ["MAGIC", "VERSION", "CorruptFileError", "save", "load", "file_bytes", "code_streams", "index_widths"]

MAGIC, VERSION = b"NNCZ", 2

_PREAMBLE = len(MAGIC) + 1 + 4  # magic, version, header length
_DIGEST = 32  # SHA-256


class CorruptFileError(ValueError):
    """A compressed-model file is truncated, corrupted, or not a compressed-model file.

    Raised by :func:`load`; a subclass of ``ValueError``.

    References: han2016deep
    """


# --------------------------------------------------------------------------- the symbol streams

def _check_index_bits(index_bits) -> int | str:
    """``index_bits``: an int in [1, 16] or ``"auto"``."""
    if isinstance(index_bits, str):
        if index_bits != "auto":
            raise ValueError(f"index_bits must be an int in [1, 16] or 'auto', got {index_bits!r}")
        return index_bits
    return validate.bits(index_bits, "index_bits")


def _stream_bytes(symbols: torch.Tensor, bits: int, huffman: bool) -> int:
    """The payload bytes of one stream, Huffman-coded or bit-packed (the header's tables aside)."""
    if huffman and symbols.numel():
        counts = coding.symbol_counts(symbols)
        lengths = coding.huffman_lengths(counts)
        return -(-sum(n * lengths[s] for s, n in counts.items()) // 8)
    return -(-symbols.numel() * bits // 8)


def _relative_streams(flat: torch.Tensor, index_bits: int | str, value_bits: int,
                      huffman: bool) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``(width, gaps, values)``: the relative-index streams of ``flat`` (zeros not stored), at
    ``index_bits`` or, for ``"auto"``, at the width in [1, 16] that makes them smallest."""
    if index_bits != "auto":
        return (index_bits, *coding.relative_encode(flat, index_bits))
    best = None
    for width in range(1, 17):
        gaps, values = coding.relative_encode(flat, width)
        size = _stream_bytes(gaps, width, huffman) + _stream_bytes(values, value_bits, huffman)
        if best is None or size < best[0]:
            best = (size, width, gaps, values)
    return best[1:]


def _shared(model: nn.Module) -> dict[str, SharedWeight]:
    """``{"<layer>.weight": SharedWeight}`` for every shared weight of ``model``."""
    return {key: p for key, p in parametrizations.find(model, SharedWeight).items()
            if key == "weight" or key.endswith(".weight")}


def _shared_streams(p: SharedWeight, index_bits: int | str, huffman: bool = True) -> dict[str, torch.Tensor]:
    """The symbol streams of one shared weight: ``{"codes"}`` when nothing is pruned, else the
    relative-index ``{"gaps", "values"}`` and their ``"width"``, where value 0 is a filler or a
    pruned entry and value ``c + 1`` is centroid ``c``."""
    if bool(p.mask.all()):
        return {"codes": p.codes.reshape(-1)}
    flat = torch.where(p.mask, p.codes + 1, torch.zeros((), dtype=torch.int64)).reshape(-1)
    width, gaps, values = _relative_streams(flat, index_bits, max(1, len(p.codebook).bit_length()), huffman)
    return {"gaps": gaps, "values": values, "width": width}


def _layer_streams(model: nn.Module, index_bits, huffman: bool) -> dict[str, dict]:
    """``{layer name: _shared_streams(...)}`` for every shared weight of ``model``, arguments checked."""
    validate.module(model)
    index_bits = _check_index_bits(index_bits)
    return {key.rpartition(".")[0]: _shared_streams(p, index_bits, huffman) for key, p in _shared(model).items()}


def code_streams(model: nn.Module, index_bits: int | str = 5, huffman: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """The integer symbol streams that :func:`save` codes for each shared layer of ``model``.

    Use them to compare a stream's entropy with its Huffman code's mean length.

    Parameters
    ----------
    model
        Any module; its shared weights are those of :func:`nncompress.sharing.apply_sharing`.
    index_bits, huffman
        As :func:`save`: the width of a relative index (gap), in [1, 16], or ``"auto"``, which
        picks per layer the width whose streams, Huffman-coded or bit-packed, are smallest.

    Returns
    -------
    dict
        ``{layer name: streams}``, where ``streams`` is ``{"codes": (n,)}`` for a layer without
        pruned weights and ``{"gaps": (e,), "values": (e,)}`` (Deep Compression's relative
        indices, ``e`` entries with fillers) otherwise; all int64.

    Raises
    ------
    TypeError
        If ``model`` is not a module or ``index_bits`` neither an int nor a string.
    ValueError
        If ``index_bits`` is outside [1, 16] and not ``"auto"``.

    References: han2016deep
    """
    streams = _layer_streams(model, index_bits, huffman)
    return {layer: {k: v for k, v in s.items() if k != "width"} for layer, s in streams.items()}


def index_widths(model: nn.Module, index_bits: int | str = "auto", huffman: bool = True) -> dict[str, int]:
    """The relative-index width :func:`save` uses for each pruned, shared layer of ``model``.

    Parameters
    ----------
    model, index_bits, huffman
        As :func:`save`.

    Returns
    -------
    dict
        ``{layer name: bits}`` for every shared layer with pruned weights.

    Raises
    ------
    TypeError, ValueError
        As :func:`code_streams`.

    References: han2016deep
    """
    streams = _layer_streams(model, index_bits, huffman)
    return {layer: s["width"] for layer, s in streams.items() if "width" in s}


# --------------------------------------------------------------------------- writing

class _Blobs:
    """The payload under construction: appended byte strings and their ``[offset, length]``;
    float values are written in their own type, or as float16 if ``half``."""

    def __init__(self, half: bool = False):
        self.parts: list[bytes] = []
        self.size = 0
        self.half = half

    def floats(self, values: torch.Tensor) -> str:
        """The name of the type float ``values`` are stored in."""
        return "float16" if self.half else str(values.dtype).removeprefix("torch.")

    def add_floats(self, values: torch.Tensor) -> list[int]:
        """Append float ``values`` as :meth:`floats` says; return their ``[offset, length]``."""
        return self.add(values.detach().to(getattr(torch, self.floats(values))).contiguous().numpy().tobytes())

    def add(self, data: bytes) -> list[int]:
        """Append ``data``; return its ``[offset, length]`` in the payload."""
        self.parts.append(data)
        self.size += len(data)
        return [self.size - len(data), len(data)]


def _encode_stream(symbols: torch.Tensor, bits: int, huffman: bool, blobs: _Blobs) -> dict:
    """Huffman-code (with the canonical code's lengths, kept in the header) or bit-pack a symbol stream."""
    if huffman and symbols.numel():
        code = coding.HuffmanCode.from_symbols(symbols)
        data, _ = code.encode(symbols)
        table = [0] * (max(code.lengths) + 1)  # canonical code: the lengths suffice; 0 for absent symbols
        for symbol, length in code.lengths.items():
            table[symbol] = length
        return {"huffman": table, "blob": blobs.add(data)}
    return {"bits": bits, "blob": blobs.add(coding.pack_bits(symbols, bits).numpy().tobytes())}


def _sparse_entry(gaps: torch.Tensor, values: torch.Tensor, index_bits: int, value_bits: int,
                  huffman: bool, blobs: _Blobs) -> dict:
    """The header fields of relative-index streams ``gaps`` and ``values``."""
    return {"index_bits": index_bits, "entries": len(values),
            "gaps": _encode_stream(gaps, index_bits, huffman, blobs),
            "values": _encode_stream(values, value_bits, huffman, blobs)}


def _shared_entry(p: SharedWeight, index_bits: int | str, huffman: bool, blobs: _Blobs) -> dict:
    """A shared weight: its codebook, then its codes (with relative indices if pruned)."""
    k = len(p.codebook)
    streams = _shared_streams(p, index_bits, huffman)
    entry = {"kind": "shared", "codebook": blobs.add_floats(p.codebook)}
    if "codes" in streams:  # no pruned weight: one code per weight, no indices
        return entry | {"dense": _encode_stream(streams["codes"], max(1, (k - 1).bit_length()), huffman, blobs)}
    return entry | _sparse_entry(streams["gaps"], streams["values"], streams["width"], max(1, k.bit_length()),
                                 huffman, blobs)


def _is_sparse(tensor: torch.Tensor) -> bool:
    """Whether a tensor is stored sparsely: floating point, at least 16 entries, half of them zero."""
    return tensor.is_floating_point() and tensor.numel() >= 16 and bool((tensor == 0).float().mean() >= 0.5)


def _entry(key: str, tensor: torch.Tensor, shared: SharedWeight | None, index_bits: int | str, huffman: bool,
           blobs: _Blobs) -> dict:
    """The header entry of one state-dict tensor, its blobs appended to ``blobs``."""
    entry = {"name": key, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
    if tensor.is_floating_point():
        entry["floats"] = blobs.floats(tensor)  # the type its float values are stored in
    if shared is not None:
        return entry | _shared_entry(shared, index_bits, huffman, blobs)
    if _is_sparse(tensor):
        flat = tensor.reshape(-1)
        alive = flat != 0
        entry |= {"kind": "sparse", "values_raw": blobs.add_floats(flat[alive])}
        width, gaps, values = _relative_streams(alive.to(torch.int64), index_bits, 1, huffman)
        return entry | _sparse_entry(gaps, values, width, 1, huffman, blobs)
    if tensor.is_floating_point():
        return entry | {"kind": "raw", "blob": blobs.add_floats(tensor)}
    return entry | {"kind": "raw", "blob": blobs.add(tensor.detach().contiguous().numpy().tobytes())}


def _encode(model: nn.Module, index_bits: int | str, huffman: bool, half: bool) -> bytes:
    """The whole file's bytes for ``model``."""
    shared = _shared(model)
    plain = parametrizations.bake(model).state_dict()  # effective weights; the model is untouched
    blobs = _Blobs(half)
    tensors = [_entry(key, tensor, shared.get(key), index_bits, huffman, blobs) for key, tensor in plain.items()]
    header = zlib.compress(json.dumps({"tensors": tensors}, separators=(",", ":")).encode(), 9)
    body = MAGIC + bytes([VERSION]) + struct.pack("<I", len(header)) + header + b"".join(blobs.parts)
    return body + hashlib.sha256(body).digest()


def save(model: nn.Module, path: str | os.PathLike, index_bits: int | str = 5, huffman: bool = True,
         half: bool = False) -> int:
    """Write ``model`` as a compressed file; return the file's size in bytes.

    - A shared weight (see :func:`nncompress.sharing.apply_sharing`) is stored as its codebook
      plus one code per non-zero, in Deep Compression's relative-index form
      (:func:`nncompress.coding.relative_encode` with ``index_bits``-bit gaps and filler zeros);
      a shared weight without zeros needs no indices and stores one code per weight.
    - Any other float tensor that is at least half zeros (a pruned weight) is stored the same way,
      with its non-zero values kept as floats.
    - Everything else is stored raw.

    Float values (codebooks, the non-zero values of sparse tensors, raw float tensors such as
    biases) keep their own type, or are rounded to float16 with ``half``: then :func:`load`
    restores them rounded, converted back to their type.

    Parametrizations (masks, quantizers, shared weights) are baked into the values stored, on a
    copy: ``model`` is left unchanged. With ``huffman`` the gap and code streams are Huffman-coded
    (:class:`nncompress.coding.HuffmanCode`), their canonical codes' lengths kept in the
    compressed header; otherwise they are bit-packed at fixed width. Every byte of the file, headers and codebooks included, counts in the returned size.
    The file is written to a temporary name and renamed, so a failed write leaves no partial file.

    Parameters
    ----------
    model
        Any module.
    path
        Where to write the file.
    index_bits
        Width of a relative index, in [1, 16]; a gap longer than ``2**index_bits`` costs a filler.
        ``"auto"`` picks, for each tensor stored sparsely, the width whose streams are smallest
        (see :func:`index_widths`).
    huffman
        Huffman-code the integer streams (True) or bit-pack them (False).
    half
        Store float values as float16 (True) or in their own type (False).

    Returns
    -------
    int
        The size of the written file in bytes.

    Raises
    ------
    TypeError
        If ``model`` is not a module, ``index_bits`` neither an int nor a string, or ``huffman``
        or ``half`` not a bool.
    ValueError
        If ``index_bits`` is outside [1, 16] and not ``"auto"``.

    References: han2016deep, huffman1952method
    """
    validate.module(model)
    index_bits = _check_index_bits(index_bits)
    for name, flag in (("huffman", huffman), ("half", half)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    data = _encode(model, index_bits, huffman, half)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def file_bytes(model: nn.Module, index_bits: int | str = 5, huffman: bool = True, half: bool = False) -> int:
    """The size in bytes of the file :func:`save` writes for ``model``.

    The file is written to a temporary folder and removed. Pass the size as ``nbytes`` to
    :func:`nncompress.measure.profile`.

    Parameters
    ----------
    model, index_bits, huffman, half
        As for :func:`save`.

    Returns
    -------
    int
        The file's size in bytes.

    Raises
    ------
    TypeError, ValueError
        As :func:`save`.

    References: han2016deep
    """
    with tempfile.TemporaryDirectory() as folder:
        return save(model, os.path.join(folder, "model.nncz"), index_bits=index_bits, huffman=huffman, half=half)


# --------------------------------------------------------------------------- reading

def _read_checked(path: str | os.PathLike) -> tuple[dict, bytes]:
    """The header and payload of a file whose magic number, checksum and version are right."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _PREAMBLE + _DIGEST or data[:len(MAGIC)] != MAGIC:
        raise CorruptFileError(f"{path}: not a compressed-model file (too short or wrong magic number)")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptFileError(f"{path}: checksum mismatch: the file is truncated or corrupted")
    if body[len(MAGIC)] != VERSION:
        raise CorruptFileError(f"{path}: unsupported format version {body[len(MAGIC)]}")
    (n,) = struct.unpack("<I", body[len(MAGIC) + 1:_PREAMBLE])
    try:
        header = json.loads(zlib.decompress(body[_PREAMBLE:_PREAMBLE + n]))
    except (ValueError, zlib.error) as exc:  # a well-formed checksum over a malformed header: not written by save
        raise CorruptFileError(f"{path}: malformed header ({exc})") from None
    return header, body[_PREAMBLE + n:]


def _blob(payload: bytes, where: Sequence[int]) -> bytes:
    """The payload bytes at ``[offset, length]``."""
    start, length = where
    return payload[start:start + length]


def _tensor(data: bytes, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """A tensor of ``dtype`` and ``shape`` from raw bytes (copied, so it owns its memory)."""
    array = np.frombuffer(data, dtype=np.dtype(dtype)).copy()
    return torch.from_numpy(array).reshape(tuple(shape))


def _decode_stream(entry: dict, count: int, payload: bytes) -> torch.Tensor:
    """The ``count`` symbols of a Huffman-coded or bit-packed stream."""
    data = _blob(payload, entry["blob"])
    if "huffman" in entry:
        table = entry["huffman"]  # one code length per symbol, 0 for absent symbols
        return coding.HuffmanCode({s: n for s, n in enumerate(table) if n}).decode(data, count)
    packed = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    return coding.unpack_bits(packed, entry["bits"], count)


def _decode_entry(entry: dict, payload: bytes) -> torch.Tensor:
    """The tensor that one header entry describes."""
    shape, n = entry["shape"], int(np.prod(entry["shape"]))
    floats = entry.get("floats", entry["dtype"])
    if entry["kind"] == "raw":
        return _tensor(_blob(payload, entry["blob"]), floats, shape).to(getattr(torch, entry["dtype"]))
    return _decode_weight(entry, payload, shape, n, floats).to(getattr(torch, entry["dtype"]))


def _decode_weight(entry: dict, payload: bytes, shape: list[int], n: int, floats: str) -> torch.Tensor:
    """The weight that a ``shared`` or ``sparse`` header entry describes, in its stored float type."""
    if "dense" in entry:
        codebook = _tensor(_blob(payload, entry["codebook"]), floats, [-1])
        return codebook[_decode_stream(entry["dense"], n, payload)].reshape(shape)
    gaps = _decode_stream(entry["gaps"], entry["entries"], payload)
    values = _decode_stream(entry["values"], entry["entries"], payload)
    flat = coding.relative_decode(gaps, values, n)
    if entry["kind"] == "shared":
        codebook = _tensor(_blob(payload, entry["codebook"]), floats, [-1])
        weight = torch.where(flat > 0, codebook[(flat - 1).clamp_min(0)], torch.zeros((), dtype=codebook.dtype))
    else:
        values = _tensor(_blob(payload, entry["values_raw"]), floats, [-1])
        weight = torch.zeros(n, dtype=values.dtype)
        weight[flat > 0] = values
    return weight.reshape(shape)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Fill ``model``, a fresh instance of the saved architecture, from the file ``path``.

    The restored weights are bitwise those of the saved model (its parametrizations baked; float
    values rounded to float16 if it was saved with ``half``). The whole file is checked (magic
    number, SHA-256, version) and decoded before anything is loaded: a truncated or corrupted file
    raises :class:`CorruptFileError` and leaves ``model`` untouched.

    Parameters
    ----------
    path
        A file written by :func:`save`.
    model
        A module with plain (unparametrized) weights of the saved names and shapes.

    Returns
    -------
    nn.Module
        ``model``, filled in place (as ``load_state_dict`` does).

    Raises
    ------
    CorruptFileError
        If the file is truncated, corrupted, of another version or not such a file.
    TypeError
        If ``model`` is not a module.
    RuntimeError
        From ``load_state_dict``, if the file's tensors do not fit ``model``.

    References: han2016deep
    """
    validate.module(model)
    header, payload = _read_checked(path)
    try:
        state = {entry["name"]: _decode_entry(entry, payload) for entry in header["tensors"]}
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise CorruptFileError(f"{path}: malformed contents ({type(exc).__name__}: {exc})") from None
    model.load_state_dict(state)
    return model
