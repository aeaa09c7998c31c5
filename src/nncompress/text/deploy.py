"""A sentence encoder deployed with ONNX Runtime: export, int8 quantization, and a module that runs it.

:func:`export_onnx` writes a :class:`~nncompress.text.encoder.SentenceEncoder` as an ONNX graph
(token ids and attention mask in, unit embeddings out, any batch size and length);
:func:`quantize_onnx` applies ONNX Runtime's dynamic int8 quantization to it, optionally leaving
some layers in float; :class:`OnnxEncoder` runs a graph in an ONNX Runtime session behind the same
interface as the torch encoder (right-padded token ids in, embeddings out), so that
:func:`nncompress.text.sts_spearman` and the harness use it unchanged. Its session uses as many
threads as torch is set to use when it is called.

References: developers2021onnx
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from .encoder import SentenceEncoder

__all__ = ["export_onnx", "quantize_onnx", "OnnxEncoder"]


class _Exported(nn.Module):
    """The encoder without its padding trim (data-dependent shapes do not export): ids and mask in."""

    def __init__(self, encoder: SentenceEncoder):
        super().__init__()
        self.transformer, self.normalize = encoder.transformer, encoder.normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled


def export_onnx(encoder: SentenceEncoder, path: str | os.PathLike, opset: int = 17) -> Path:
    """Write ``encoder`` as an ONNX graph with dynamic batch size and length.

    Parameters
    ----------
    encoder
        A :class:`SentenceEncoder` (float weights).
    path
        The ``.onnx`` file to write.
    opset
        The ONNX opset (an int >= 14).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        If ``encoder`` is not a :class:`SentenceEncoder`.
    """
    if not isinstance(encoder, SentenceEncoder):
        raise TypeError(f"encoder must be a SentenceEncoder, got {type(encoder).__name__}")
    opset = validate.integer(opset, "opset", 14)
    ids = torch.tensor([[1, 2, 3, 4], [1, 5, 4, 0]])  # any ids in the vocabulary: only the shapes are traced
    ids[1, 3] = encoder.pad_id
    mask = (ids != encoder.pad_id).long()
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "embeddings": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow in the HF model
        torch.onnx.export(_Exported(encoder).eval(), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["embeddings"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    return Path(path)


def _node_layer(node_name: str) -> str:
    """``/transformer/encoder/layer.0/output/dense/MatMul`` -> ``transformer.encoder.layer.0.output.dense``."""
    return node_name.strip("/").replace("/", ".").rsplit(".", 1)[0]


def quantize_onnx(source: str | os.PathLike, target: str | os.PathLike, keep_float: Sequence[str] = ()) -> Path:
    """ONNX Runtime's dynamic int8 quantization of an exported encoder.

    Weights of matrix products (and the embedding tables' lookups) become int8, per tensor;
    activations are quantized to 8 bits on the fly, with a scale per tensor and call.

    Parameters
    ----------
    source, target
        The float graph (:func:`export_onnx`) and the file to write.
    keep_float
        Layer names of the torch encoder (e.g. ``"transformer.encoder.layer.0.output.dense"``) whose
        products stay in float.

    Returns
    -------
    pathlib.Path
        ``target``.

    Raises
    ------
    ValueError
        If a name in ``keep_float`` matches no node of the graph.

    References
    ----------
    developers2021onnx
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if isinstance(keep_float, str):
        raise TypeError("keep_float must be a sequence of layer names, not a single str")
    graph = onnx.load(str(source)).graph
    excluded = [node.name for node in graph.node if _node_layer(node.name) in set(keep_float)]
    unmatched = sorted(set(keep_float) - {_node_layer(name) for name in excluded})
    if unmatched:
        raise ValueError(f"keep_float names layers with no node in the graph: {unmatched[:5]}")
    import logging

    logger, level = logging.getLogger(), logging.getLogger().level
    logger.setLevel(logging.ERROR)  # ONNX Runtime suggests a pre-processing step that changes nothing here
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logger.setLevel(level)
    return Path(target)


class OnnxEncoder(nn.Module):
    """An ONNX graph run by ONNX Runtime, with a sentence encoder's interface (token ids in).

    Parameters
    ----------
    path
        The ``.onnx`` file (from :func:`export_onnx` or :func:`quantize_onnx`).
    pad_id
        The padding token's id.

    References
    ----------
    developers2021onnx
    """

    def __init__(self, path: str | os.PathLike, pad_id: int = 0):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}")
        self.pad_id = validate.integer(pad_id, "pad_id", 0)
        self._sessions: dict[int, object] = {}

    def session(self, threads: int):
        """The ONNX Runtime session with ``threads`` intra-op threads (created once)."""
        if threads not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            # ONNX Runtime's threads spin for a while after each run, taking the cores from whatever
            # runs next: a torch model timed right after this one in turns measured 1.27x slower
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sessions[threads] = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def file_bytes(self) -> int:
        """The size of the ``.onnx`` file."""
        return self.path.stat().st_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != self.pad_id
        length = int(mask.sum(1).max())
        feeds = {"input_ids": input_ids[:, :length].numpy(), "attention_mask": mask[:, :length].long().numpy()}
        return torch.from_numpy(self.session(torch.get_num_threads()).run(None, feeds)[0])
