"""The character-level GPT: the model against Hugging Face's GPT-2, the key-value cache,
generation, speculative decoding (exactness and the target distribution), and the text pipeline."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from nncompress import text
from nncompress.calibration import one_thread
from nncompress.models import GPT, GPTConfig, gpt_blocks, gpt_heads, gpt_layers
from nncompress.text.decoding import KVCache, speculative_accept, speculative_generate


@pytest.fixture(autouse=True)
def _one_thread(request):
    """The tiny models' many small operations run on one thread: two threads only synchronize
    (and slow down 50x when another process holds a core). Training keeps its threads."""
    if "shipped" in request.node.name or "retraining" in request.node.name:
        yield
        return
    with one_thread():
        yield


def tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    config = dict(vocab_size=11, block_size=32, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**config, **kwargs})).eval()


def test_matches_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    model = tiny(tie_weights=True)
    with torch.no_grad():  # a trained-looking model: every parameter away from its initial value
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    c = model.config
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=None)).eval()
    state = {"transformer.wte.weight": model.tok_emb.weight, "transformer.wpe.weight": model.pos_emb.weight,
             "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": model.ln_f.bias,
             "lm_head.weight": model.head.weight}
    for i, b in enumerate(model.blocks):  # Hugging Face's Conv1D stores (in, out): the transposes
        h = f"transformer.h.{i}."
        state.update({h + "ln_1.weight": b.ln1.weight, h + "ln_1.bias": b.ln1.bias, h + "ln_2.weight": b.ln2.weight,
                      h + "ln_2.bias": b.ln2.bias,
                      h + "attn.c_attn.weight": torch.cat([b.attn.q.weight, b.attn.k.weight, b.attn.v.weight]).T,
                      h + "attn.c_attn.bias": torch.cat([b.attn.q.bias, b.attn.k.bias, b.attn.v.bias]),
                      h + "attn.c_proj.weight": b.attn.proj.weight.T, h + "attn.c_proj.bias": b.attn.proj.bias,
                      h + "mlp.c_fc.weight": b.mlp.fc.weight.T, h + "mlp.c_fc.bias": b.mlp.fc.bias,
                      h + "mlp.c_proj.weight": b.mlp.proj.weight.T, h + "mlp.c_proj.bias": b.mlp.proj.bias})
    missing, unexpected = hf.load_state_dict({k: v.detach().contiguous() for k, v in state.items()}, strict=False)
    assert not unexpected and all(".attn.bias" in k or "masked_bias" in k for k in missing)
    idx = torch.randint(0, c.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(idx), hf(idx).logits, atol=1e-5)
        ours = text.generate(model, idx[0, :5], 12)
        theirs = hf.generate(idx[:1, :5], max_new_tokens=12, do_sample=False, pad_token_id=0)[0]
    assert torch.equal(ours, theirs)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.0)
    with pytest.raises(TypeError, match="n_layer"):
        GPTConfig(n_layer=2.0)
    with pytest.raises(TypeError, match="config"):
        GPT({"n_layer": 2})
    model = tiny()
    with pytest.raises(TypeError, match="idx"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_structure_parameters_and_layer_names():
    model = tiny()
    d, v, t, layers = 16, 11, 32, 2
    assert sum(p.numel() for p in model.parameters()) == v * d + t * d + layers * (12 * d * d + 13 * d) + 2 * d + d * v
    assert gpt_layers(model)[:2] == ["blocks.0.attn.q", "blocks.0.attn.k"] and len(gpt_layers(model)) == 12
    assert [name for block in gpt_blocks(model) for name in block] == gpt_layers(model)
    assert [len(block) for block in gpt_blocks(model)] == [6, 6] and gpt_blocks(model)[1][0] == "blocks.1.attn.q"
    heads = gpt_heads(model)
    assert [(h.count, h.size, h.output) for h in heads] == [(2, 8, "blocks.0.attn.proj"), (2, 8, "blocks.1.attn.proj")]
    tied = tiny(tie_weights=True)
    assert tied.head.weight is tied.tok_emb.weight


def test_cache_gives_the_uncached_logits():
    model = tiny()
    idx = torch.randint(0, 11, (2, 20), generator=torch.Generator().manual_seed(0))
    full = model(idx)
    cache = KVCache()
    parts = [model(idx[:, :7], cache), model(idx[:, 7:8], cache), model(idx[:, 8:13], cache), model(idx[:, 13:], cache)]
    assert cache.length() == 20 and cache.length(1) == 20
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    cache.truncate(9)  # forget the last tokens, then continue differently: as if they had never been seen
    assert torch.allclose(model(idx[:, 9:], cache), full[:, 9:], atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cached_and_uncached_generation_agree(temperature):
    model = tiny()
    prompt = torch.tensor([1, 2, 3])
    cached = text.generate(model, prompt, 25, temperature=temperature, seed=3)
    assert torch.equal(cached, text.generate(model, prompt, 25, temperature=temperature, seed=3, cache=False))
    assert torch.equal(cached[:3], prompt) and len(cached) == 28
    if temperature:
        assert not torch.equal(cached, text.generate(model, prompt, 25, temperature=temperature, seed=4))
    longer = text.generate(model, prompt, 40, cache=False)  # past the context: the last 32 tokens are read
    assert len(longer) == 43 and torch.equal(longer[:28], text.generate(model, prompt, 25))


def test_generation_errors():
    model = tiny()
    with pytest.raises(TypeError, match="prompt"):
        text.generate(model, torch.tensor([[1, 2]]), 3)
    with pytest.raises(ValueError, match="new_tokens"):
        text.generate(model, torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="block_size=32"):
        text.generate(model, torch.tensor([1, 2]), 31)
    with pytest.raises(ValueError, match="temperature"):
        text.generate(model, torch.tensor([1]), 3, temperature=-1.0)
    with pytest.raises(ValueError, match="bits"):
        KVCache(bits=1)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantized_cache_error_and_bytes(bits):
    cache = KVCache(bits)
    keys, values = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8) * 4
    k, v = cache.update(0, keys, values)
    for x, deq in ((keys, k), (values, v)):  # half a step per element, the scale rounded to float16
        step = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / (2 ** bits - 1)
        assert ((deq - x).abs() <= 0.5 * step * 1.01 + 2e-3 * x.abs().amax(-1, keepdim=True)).all()
    assert cache.nbytes() == 2 * (math.ceil(2 * 3 * 5 * 8 * bits / 8) + 2 * 2 * (2 * 3 * 5))
    assert KVCache().nbytes() == 0
    plain = KVCache()
    plain.update(0, keys, values)
    assert plain.nbytes() == 2 * keys.numel() * 4


def test_cached_passes_give_the_full_forward_passes_logits_at_every_repeat():
    model = tiny(0)
    context, fed = torch.tensor([4, 5, 6, 7, 8]), torch.tensor([9, 10, 3])
    full = model(torch.cat([context, fed])[None])[:, -3:]
    once, thrice = text.cached_passes(model, context, fed, repeat=1), text.cached_passes(model, context, fed, repeat=3)
    assert torch.allclose(once(), full, atol=1e-5) and torch.allclose(thrice(), full, atol=1e-5)
    assert torch.allclose(thrice(), full, atol=1e-5)  # called again: the cache was truncated back each time
    with pytest.raises(ValueError, match="block_size"):
        text.cached_passes(model, torch.arange(model.config.block_size), fed)
    with pytest.raises(TypeError, match="fed"):
        text.cached_passes(model, context, fed.float())
    with pytest.raises(ValueError, match="repeat"):
        text.cached_passes(model, context, fed, repeat=0)


def test_speculative_greedy_is_exactly_greedy():
    target, draft = tiny(0), tiny(1, n_layer=1)
    prompt = torch.tensor([4, 5, 6])
    tokens, stats = speculative_generate(target, draft, prompt, 24, k=3)
    assert torch.equal(tokens, text.generate(target, prompt, 24))
    assert stats.drafted == 3 * stats.target_calls and 0 <= stats.accepted <= stats.drafted
    same, stats_same = speculative_generate(target, target, prompt, 24, k=4)  # a perfect draft: all accepted
    assert torch.equal(same, tokens) and stats_same.acceptance == 1.0 and stats_same.target_calls == 5
    with pytest.raises(ValueError, match="context"):
        speculative_generate(target, draft, prompt, 27, k=3)


def test_greedy_acceptance_is_the_acceptance_rule_on_one_hot_distributions():
    from nncompress.text.decoding import _greedy_accept

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        k = 1 + trial % 4
        logits = torch.randn(k + 1, 5, generator=g)
        drafted = torch.where(torch.rand(k, generator=g) < 0.6, logits[:k].argmax(-1), torch.randint(5, (k,), generator=g))
        one_hot = F.one_hot(logits.argmax(-1), 5).float()
        expected = speculative_accept(one_hot, F.one_hot(drafted, 5).float(), drafted, torch.Generator().manual_seed(trial))
        assert _greedy_accept(logits, drafted.tolist()) == expected


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    from scipy.stats import chisquare

    expected = probs * counts.sum()
    keep = expected > 5
    observed, expected = counts[keep].double(), expected[keep].double()
    return float(chisquare(observed.numpy(), expected.numpy() * observed.sum().item() / expected.sum().item()).pvalue)


def test_speculative_accept_preserves_the_target_distribution():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]])
    q = torch.tensor([[0.1, 0.1, 0.4, 0.4]])
    counts = torch.zeros(4)
    for _ in range(20000):  # the first emitted token must be distributed as p[0], whatever q proposes
        x = torch.multinomial(q[0], 1, generator=gen)
        counts[speculative_accept(p, q, x, gen)[0]] += 1
    assert chi_square_p(counts, p[0]) > 1e-3
    assert abs(counts[0] / 20000 - 0.5) < 0.015  # q under-proposes token 0: the residual restores it
    with pytest.raises(ValueError, match="k=1"):
        speculative_accept(p[:1], q, torch.tensor([0]))


def test_speculative_sampling_matches_the_target_model():
    """Two-token continuations sampled speculatively against the target's exact joint distribution."""
    target, draft = tiny(0, vocab_size=4), tiny(5, vocab_size=4, n_layer=1)
    prompt = torch.tensor([1, 2])
    with torch.no_grad():
        first = F.softmax(target(prompt[None])[0, -1], -1)
        second = F.softmax(target(torch.stack([torch.cat([prompt, torch.tensor([t])]) for t in range(4)]))[:, -1], -1)
    joint = (first[:, None] * second).flatten()
    counts = torch.zeros(16)
    for seed in range(3000):
        tokens, _ = speculative_generate(target, draft, prompt, 2, k=2, temperature=1.0, seed=seed)
        counts[4 * tokens[2] + tokens[3]] += 1
    assert chi_square_p(counts, joint) > 1e-3


def test_char_vocab_round_trip_and_errors():
    vocab = text.CharVocab.of("to be, or not to be")
    assert vocab.chars == " ,benort" and len(vocab) == 8
    assert vocab.decode(vocab.encode("not to be")) == "not to be"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.encode("question")
    with pytest.raises(ValueError, match="token ids"):
        vocab.decode([8])
    with pytest.raises(ValueError, match="distinct"):
        text.CharVocab("aa")


def test_lm_batch_and_lm_loss():
    ids = torch.arange(100) % 11
    x, y = text.lm_batch(ids, 4, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 10) and torch.equal(y[:, :-1], x[:, 1:])
    with pytest.raises(ValueError, match="longer than block_size"):
        text.lm_batch(ids[:10], 4, 10, torch.Generator())
    model = tiny()
    with torch.no_grad():  # by hand: windows 0-32, 32-64, 64-96, 96-99, each predicting its next tokens
        manual = sum(F.cross_entropy(model(ids[s:s + 33][None, :-1])[0], ids[s + 1:s + 33], reduction="sum").item()
                     for s in range(0, 99, 32)) / 99
    assert text.lm_loss(model, ids, batch_size=2) == pytest.approx(manual, rel=1e-5)
    assert text.lm_loss(model, ids, cache_factory=KVCache) == pytest.approx(manual, rel=1e-5)
    assert text.lm_loss(model, ids, cache_factory=lambda: KVCache(8)) == pytest.approx(manual, rel=1e-2)


def test_lm_calibration():
    ids = torch.arange(1000) % 11
    batches = text.lm_calibration(ids, windows=10, block_size=32, batch_size=4, seed=3)
    assert [tuple(b.shape) for b in batches] == [(4, 32), (4, 32), (2, 32)]
    x, _ = text.lm_batch(ids, 10, 32, torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat(batches), x)  # the same windows as lm_batch draws
    with pytest.raises(ValueError, match="batch_size"):
        text.lm_calibration(ids, batch_size=0)


def test_training_on_from_a_pruned_model_keeps_its_zeros():
    from nncompress import pruning

    ids = torch.arange(3000) % 11
    start = pruning.prune_oneshot(tiny(), text.lm_calibration(ids, 8, 32), "sparsegpt", 0.75,
                                  layers=gpt_layers(tiny()), groups=gpt_blocks(tiny()))
    recipe = text.GPTRecipe(n_layer=2, n_head=2, n_embd=16, block_size=32, steps=6, batch_size=4, warmup=2, eval_every=3)
    model, history = text.train_gpt(recipe, ids[:2000], ids[2000:], vocab_size=11, init=start)
    assert history["step"] == [0, 3, 6] and math.isnan(history["train_loss"][0])
    assert history["val_loss"][0] == pytest.approx(text.lm_loss(start, ids[2000:]))
    assert pruning.layer_sparsity(model, gpt_layers(model)) == {name: 0.75 for name in gpt_layers(model)}
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values())]
    assert any(changed) and pruning.masks_of(start)  # trained a copy; the start keeps its masks
    with pytest.raises(TypeError, match="init"):
        text.train_gpt(recipe, ids[:2000], ids[2000:], vocab_size=11, init=torch.nn.Linear(2, 2))


def test_shipped_gpt():
    checkpoint = text.gpt_checkpoint()
    assert checkpoint["recipe"] == dataclasses.asdict(text.GPTS["shakespeare_gpt"])
    assert checkpoint["val_loss"] <= 1.70 and checkpoint["train_seconds"] <= 40 * 60
    from nncompress.store.core import SHIPPED_DIR

    assert (SHIPPED_DIR / text.gpt_filename("shakespeare_gpt")).stat().st_size <= 8e6
    vocab, _, val = text.shakespeare_ids()
    assert vocab.chars == checkpoint["chars"] and len(vocab) == 65
    assert text.lm_loss(text.load_gpt(), val) == pytest.approx(checkpoint["val_loss"], abs=1e-4)


def test_shipped_sparse_gpt():
    """SparseGPT at 80 %, fine-tuned: its record, its zeros, and a curve that starts at the
    one-shot model and ends within a tenth of a nat of the float model."""
    from nncompress import pruning

    checkpoint = text.gpt_checkpoint("shakespeare_sparse80")
    recipe = text.GPTS["shakespeare_sparse80"]
    assert checkpoint["recipe"] == dataclasses.asdict(recipe) and recipe.sparsity == 0.8
    model = text.load_gpt("shakespeare_sparse80")
    assert all(abs(s - 0.8) < 1e-3 for s in pruning.layer_sparsity(model, gpt_layers(model)).values())
    _, _, val = text.shakespeare_ids()
    assert text.lm_loss(model, val) == pytest.approx(checkpoint["val_loss"], abs=1e-4)
    base, curve = text.gpt_checkpoint()["val_loss"], checkpoint["history"]["val_loss"]
    assert checkpoint["history"]["step"][0] == 0 and curve[0] > base + 0.3 and checkpoint["val_loss"] < base + 0.1
    assert checkpoint["train_seconds"] < 15 * 60


def test_retraining_reproduces_the_start_of_the_curve():
    """The shipped model's first 100 steps, again: the same validation loss at step 100."""
    checkpoint = text.gpt_checkpoint()
    recipe = text.GPTS["shakespeare_gpt"]
    vocab, train, val = text.shakespeare_ids()
    _, history = text.train_gpt(recipe, train, val, len(vocab), seed=0, steps=recipe.eval_every)
    assert history["step"] == [checkpoint["history"]["step"][0]]
    assert history["val_loss"][0] == pytest.approx(checkpoint["history"]["val_loss"][0], abs=0.02)


def test_flops_per_token_and_the_profile():
    model, d, layers = tiny(), 16, 2
    linear = 2 * (layers * 12 * d * d + d * 11)  # two FLOPs per weight of every Linear layer, per token
    assert text.flops_per_token(model, 1) == linear + layers * 4 * d  # one token: scores and mix, 2d each
    t = 32  # over a window, the scores of all t x t pairs are counted (the masked half too, as computed)
    assert text.flops_per_token(model, t) == linear + layers * 4 * d * t
    with pytest.raises(ValueError, match="context"):
        text.flops_per_token(model, 33)
    ids = torch.arange(200) % 11
    small = tiny(1, n_layer=1)
    profiles = text.profile_gpts({"two layers": model, "one layer": small}, ids, ids[:4], new_tokens=8, rounds=1)
    assert [p.metric for p in profiles] == ["loss", "loss"] and profiles[0].score == pytest.approx(text.lm_loss(model, ids))
    assert profiles[1].params < profiles[0].params and all(p.latency[1] > 0 for p in profiles)
    assert profiles[0].shortfall == profiles[0].score  # lower loss is better
    with pytest.raises(ValueError, match="models"):
        text.profile_gpts({}, ids, ids[:4])


def test_shipped_draft_and_exact_speculative_decoding():
    """The distilled one-layer draft: its record, and speculative decoding with it returns exactly
    the baseline's greedy tokens."""
    checkpoint = text.gpt_checkpoint("shakespeare_draft")
    assert checkpoint["recipe"] == dataclasses.asdict(text.GPTS["shakespeare_draft"])
    vocab, _, val = text.shakespeare_ids()
    target, draft = text.load_gpt(), text.load_gpt("shakespeare_draft")
    assert text.lm_loss(draft, val) == pytest.approx(checkpoint["val_loss"], abs=1e-4)
    assert text.gpt_checkpoint()["val_loss"] < checkpoint["val_loss"] < 2.0
    assert len(draft.blocks) == 1 and draft.config.n_embd == target.config.n_embd
    alone = text.gpt_checkpoint("shakespeare_1layer")  # the same student from the text alone: worse
    assert alone["recipe"] == dataclasses.asdict(text.GPTS["shakespeare_1layer"])
    assert alone["recipe"]["steps"] == checkpoint["recipe"]["steps"] and alone["val_loss"] > checkpoint["val_loss"] + 0.02
    prompt = val[:32]
    tokens, stats = speculative_generate(target, draft, prompt, 120, k=3)
    assert torch.equal(tokens, text.generate(target, prompt, 120)) and stats.acceptance > 0.3
