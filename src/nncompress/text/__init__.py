"""Sentence encoders on the STS Benchmark: the data, the model, encoding, the metric and the harness.

- :mod:`.stsb`: :func:`load_stsb`, the three splits of STS-B, checked by sha256;
- :mod:`.shakespeare`: :func:`load_tinyshakespeare`, Karpathy's Tiny Shakespeare, checked by
  sha256, split as nanoGPT splits it;
- :mod:`.encoder`: :func:`load_minilm` (all-MiniLM-L6-v2, checked by sha256, as a
  :class:`SentenceEncoder`), :func:`tokenize`, :func:`tokenize_pairs`, :func:`encode` (in
  length-sorted batches), :func:`sts_spearman`, the benchmark's metric, and :func:`sts_fidelity`, the
  metric with a compressed model's distance from a reference, from one encoding;
- :mod:`.deploy`: :func:`export_onnx`, :func:`quantize_onnx` and :class:`OnnxEncoder`, the
  encoder deployed with ONNX Runtime;
- :mod:`.student`: :func:`encoder_student`, 3-layer students distilled from the model on
  unlabeled sentences (:func:`distill_encoder`), shipped in float16;
- :mod:`.charlm`: the character-level GPT of the generative chapter: :class:`CharVocab`,
  :func:`lm_loss` (nats per character), :func:`train_gpt` (from the text, or distilled on a
  teacher's logits) and :func:`load_gpt`, the trained models from the store;
- :mod:`.decoding`: :class:`KVCache` (float32 or quantized keys and values), :func:`generate`
  (greedy or sampled, with or without the cache), :func:`speculative_generate` and
  :func:`cached_passes` (the cost of its large model's pass over drafted tokens);
- :mod:`.harness`: :func:`flops_per_sentence` at the lengths of real sentences and
  :func:`profile_encoders`, the harness's profile of sentence encoders compared with each other.

References: cer2017semeval, reimers2019sentence, wang2020minilm
"""

from .encoder import (MINILM_MAX_LENGTH, MINILM_SHA256, SentenceEncoder, TokenizedPairs, encode, length_batches,
                      load_minilm, minilm_path, padded_tokens, similarities, spearman, sts_fidelity, sts_spearman, tokenize,
                      tokenize_pairs)
from .charlm import (GPTS, CharVocab, GPTRecipe, PrunedGPTRecipe, gpt_checkpoint, gpt_filename, lm_batch,
                     lm_calibration, lm_loss, load_gpt, make_gpt, shakespeare_ids, train_gpt)
from .decoding import KVCache, SpeculativeStats, cached_passes, generate, speculative_accept, speculative_generate
from .deploy import OnnxEncoder, export_onnx, quantize_onnx
from .harness import flops_per_sentence, flops_per_token, profile_encoders, profile_gpts, timing_sentences
from .shakespeare import (SHAKESPEARE_SHA256, SHAKESPEARE_URLS, load_tinyshakespeare, shakespeare_lines,
                          shakespeare_split)
from .stsb import STSB, STSB_FILES, STSB_MIRRORS, STSPairs, load_stsb, read_sts
from .student import (STUDENTS, StudentRecipe, distill_encoder, encoder_student, make_student, student_checkpoint,
                      student_filename)

__all__ = [
    "STSB_FILES", "STSB_MIRRORS", "STSPairs", "STSB", "read_sts", "load_stsb",
    "SHAKESPEARE_SHA256", "SHAKESPEARE_URLS", "load_tinyshakespeare", "shakespeare_split", "shakespeare_lines",
    "MINILM_SHA256", "MINILM_MAX_LENGTH", "minilm_path", "SentenceEncoder", "load_minilm", "tokenize",
    "TokenizedPairs", "tokenize_pairs", "encode", "length_batches", "padded_tokens", "similarities", "spearman", "sts_spearman",
    "sts_fidelity",
    "flops_per_sentence", "timing_sentences", "profile_encoders", "flops_per_token", "profile_gpts",
    "export_onnx", "quantize_onnx", "OnnxEncoder",
    "StudentRecipe", "STUDENTS", "distill_encoder", "student_filename", "student_checkpoint", "make_student",
    "encoder_student",
    "CharVocab", "shakespeare_ids", "lm_batch", "lm_calibration", "lm_loss", "GPTRecipe", "PrunedGPTRecipe", "GPTS",
    "train_gpt", "gpt_filename", "make_gpt", "gpt_checkpoint", "load_gpt",
    "KVCache", "generate", "speculative_accept", "speculative_generate", "SpeculativeStats", "cached_passes",
]
