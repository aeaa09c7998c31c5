"""A character-level GPT trained on Tiny Shakespeare: the vocabulary, the loss, training and the store.

The text is split as nanoGPT splits it (first 90 % for training, the rest for validation) and
encoded one character per token (65 distinct characters). :func:`lm_loss` is the validation loss
in nats per character over the whole validation part, read in consecutive windows of the
model's context: deterministic, unlike a loss estimated on random windows. :func:`train_gpt`
trains with AdamW, a linear warm-up and a cosine decay (nanoGPT's recipe for this corpus), from
scratch, distilled on a teacher's logits, or on from a given model (a pruned one keeps its masks);
:func:`make_gpt` writes a checkpoint, shipped in float16 and evaluated as stored, and
:func:`load_gpt` returns the model. A :class:`PrunedGPTRecipe` makes a model by pruning another
one shot (:func:`nncompress.pruning.prune_oneshot`) and fine-tuning the survivors.

References: karpathy2022nanogpt, radford2019language, hinton2015distilling, kim2016sequence,
frantar2023sparsegpt
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import validate
from ..parametrizations import bake_
from ..models import GPT, GPTConfig
from .shakespeare import load_tinyshakespeare, shakespeare_split

__all__ = ["CharVocab", "shakespeare_ids", "lm_batch", "lm_calibration", "lm_loss", "GPTRecipe", "PrunedGPTRecipe", "GPTS",
           "train_gpt", "gpt_filename", "make_gpt", "gpt_checkpoint", "load_gpt"]


@dataclass(frozen=True)
class CharVocab:
    """One token per character: ``chars`` sorted, token ``i`` is ``chars[i]``.

    Parameters
    ----------
    chars
        The distinct characters, in token order.
    """

    chars: str

    def __post_init__(self):
        if not isinstance(self.chars, str) or not self.chars or len(set(self.chars)) != len(self.chars):
            raise ValueError(f"chars must be a non-empty str of distinct characters, got {self.chars!r:.80}")

    @classmethod
    def of(cls, text: str) -> "CharVocab":
        """The vocabulary of the characters in ``text`` (65 for Tiny Shakespeare)."""
        if not isinstance(text, str) or not text:
            raise TypeError(f"text must be a non-empty str, got {type(text).__name__}")
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """The token ids of ``text`` (int64); a character outside the vocabulary raises ValueError."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = set(text) - index.keys()
        if unknown:
            raise ValueError(f"text has characters outside the vocabulary: {''.join(sorted(unknown))!r}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        """The text of token ids (a 1-D tensor or a sequence of ints)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if any(not 0 <= i < len(self.chars) for i in ids):
            raise ValueError(f"token ids must lie in [0, {len(self.chars) - 1}]")
        return "".join(self.chars[i] for i in ids)


def shakespeare_ids() -> tuple[CharVocab, torch.Tensor, torch.Tensor]:
    """Tiny Shakespeare as token ids: the vocabulary, the training ids and the validation ids.

    Returns
    -------
    tuple
        ``(vocab, train, val)``: a :class:`CharVocab` of the whole text's 65 characters and two
        1-D int64 tensors (1,003,854 and 111,540 characters).
    """
    text = load_tinyshakespeare()
    vocab = CharVocab.of(text)
    train, val = shakespeare_split(text)
    return vocab, vocab.encode(train), vocab.encode(val)


def lm_batch(ids: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``ids`` and the same windows shifted by one token (nanoGPT's batches).

    Parameters
    ----------
    ids
        1-D token ids, longer than ``block_size``.
    batch_size, block_size
        Windows per batch and tokens per window (ints >= 1).
    generator
        Draws the windows' starts.

    Returns
    -------
    tuple of Tensor
        ``(x, y)``, each ``(batch_size, block_size)``; ``y[:, t]`` is the token after ``x[:, t]``.
    """
    ids = validate.tensor(ids, "ids", dim=1)
    batch_size, block_size = validate.integer(batch_size, "batch_size", 1), validate.integer(block_size, "block_size", 1)
    if len(ids) <= block_size:
        raise ValueError(f"ids must be longer than block_size={block_size}, got {len(ids)} tokens")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    return ids[starts[:, None] + offsets], ids[starts[:, None] + offsets + 1]


def lm_calibration(ids: torch.Tensor, windows: int = 64, block_size: int = 256, batch_size: int = 16,
                   seed: int = 0) -> list[torch.Tensor]:
    """Calibration text for the one-shot methods: ``windows`` random windows of ``ids``, in batches.

    Parameters
    ----------
    ids
        1-D token ids (the training part: calibration never reads validation text).
    windows, block_size
        How many windows, of how many tokens (ints >= 1).
    batch_size
        Windows per batch (the last batch may be shorter).
    seed
        Seeds the windows' starts.

    Returns
    -------
    list of Tensor
        Batches of shape ``(batch_size, block_size)``, one forward pass each.
    """
    batch_size = validate.integer(batch_size, "batch_size", 1)
    x, _ = lm_batch(ids, windows, block_size, torch.Generator().manual_seed(validate.integer(seed, "seed", 0)))
    return list(x.split(batch_size))


@torch.no_grad()
def lm_loss(model: torch.nn.Module, ids: torch.Tensor, block_size: int | None = None, batch_size: int = 8,
            cache_factory: Callable[[], object] | None = None) -> float:
    """The mean next-token loss (nats per token) of ``model`` over all of ``ids``.

    ``ids`` is read in consecutive windows of ``block_size + 1`` tokens overlapping by one, so
    every token after the first is predicted once, from the tokens before it in its window.

    Parameters
    ----------
    model
        A language model: ``model(x)`` returns logits ``(batch, tokens, vocab)``.
    ids
        1-D token ids (the validation part).
    block_size
        Tokens per window; the model's context (``model.config.block_size``) when None.
    batch_size
        Windows per forward pass.
    cache_factory
        Makes an empty key-value cache passed to each forward pass (to measure the loss with a
        quantized cache, :class:`nncompress.text.KVCache`), or None for none.

    Returns
    -------
    float
        Nats per token; ``exp`` of it is the perplexity.
    """
    validate.module(model)
    ids = validate.tensor(ids, "ids", dim=1)
    block_size = validate.integer(block_size if block_size is not None else model.config.block_size, "block_size", 1)
    batch_size = validate.integer(batch_size, "batch_size", 1)
    if len(ids) < 2:
        raise ValueError("ids must hold at least 2 tokens")
    was_training = model.training
    model.eval()
    windows = [ids[s:s + block_size + 1] for s in range(0, len(ids) - 1, block_size)]
    full = [w for w in windows if len(w) == block_size + 1]
    groups = [torch.stack(full[i:i + batch_size]) for i in range(0, len(full), batch_size)]
    groups += [w[None] for w in windows if len(w) < block_size + 1]  # the last, shorter window
    total, count = 0.0, 0
    for group in groups:
        kwargs = {"cache": cache_factory()} if cache_factory is not None else {}
        logits = model(group[:, :-1], **kwargs)
        total += F.cross_entropy(logits.flatten(0, 1).float(), group[:, 1:].flatten(), reduction="sum").item()
        count += group[:, 1:].numel()
    model.train(was_training)
    return total / count


@dataclass(frozen=True)
class GPTRecipe:
    """How a character-level GPT is made.

    Attributes
    ----------
    n_layer, n_head, n_embd, block_size, dropout
        The model's shape (:class:`nncompress.models.GPTConfig`; 65 characters of vocabulary).
    steps, batch_size
        AdamW steps on ``batch_size`` random windows of ``block_size`` tokens.
    lr, min_lr, warmup
        A linear warm-up over ``warmup`` steps to ``lr``, then a cosine decay to ``min_lr``.
    weight_decay, beta2, grad_clip
        AdamW's decoupled weight decay (on matrices only) and second-moment decay; the gradients'
        global norm is clipped to ``grad_clip``.
    eval_every
        Steps between measurements of the validation loss (the curve stored with the model).
    teacher
        The name of a recipe in :data:`GPTS` whose model's logits the student learns from
        (distillation), or None to learn from the text alone.
    temperature, kd_weight
        The distillation temperature; the loss is ``kd_weight * T**2 * KL(teacher || student)``
        at temperature ``T`` plus ``(1 - kd_weight)`` times the cross-entropy with the text.
    """

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int = 256
    dropout: float = 0.1
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_every: int = 100
    teacher: str | None = None
    temperature: float = 1.0
    kd_weight: float = 0.0

    def config(self, vocab_size: int = 65) -> GPTConfig:
        """The model's :class:`GPTConfig`."""
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout)


@dataclass(frozen=True)
class PrunedGPTRecipe:
    """How a pruned GPT is made: another GPT of :data:`GPTS`, pruned one shot, then fine-tuned.

    Attributes
    ----------
    base
        The name of the recipe in :data:`GPTS` whose model is pruned.
    method, sparsity, n, m
        The one-shot pruning of every matrix of the blocks (:func:`nncompress.pruning.prune_oneshot`
        on :func:`nncompress.models.gpt_layers`, block after block).
    calibration
        Windows of training text it calibrates on (:func:`lm_calibration`, seeded by the seed).
    finetune
        The fine-tune: the base's shape and the schedule; the masks keep the pruned weights at zero.
    """

    base: str
    method: str
    finetune: GPTRecipe
    sparsity: float = 0.5
    n: int | None = None
    m: int | None = None
    calibration: int = 64

    def config(self, vocab_size: int = 65) -> GPTConfig:
        """The model's :class:`GPTConfig` (the base's)."""
        return self.finetune.config(vocab_size)


# "shakespeare_gpt": the chapter's model, about 30 minutes on two cores. "shakespeare_draft": a
# one-layer student distilled on its logits, the draft model of speculative decoding;
# "shakespeare_1layer": the same student trained on the text alone (what distillation adds).
# "shakespeare_sparse80": shakespeare_gpt with 80 % of each matrix pruned by SparseGPT, fine-tuned.
GPTS = {"shakespeare_gpt": GPTRecipe(n_layer=4, n_head=4, n_embd=256),
        "shakespeare_draft": GPTRecipe(n_layer=1, n_head=4, n_embd=256, steps=1500, teacher="shakespeare_gpt",
                                       kd_weight=0.9),
        "shakespeare_1layer": GPTRecipe(n_layer=1, n_head=4, n_embd=256, steps=1500),
        "shakespeare_sparse80": PrunedGPTRecipe(
            "shakespeare_gpt", "sparsegpt", sparsity=0.8, calibration=32,
            finetune=GPTRecipe(n_layer=4, n_head=4, n_embd=256, steps=400, lr=3e-4, min_lr=3e-5, warmup=20,
                               eval_every=50))}


def _lr(recipe: GPTRecipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: GPT, recipe: GPTRecipe) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, recipe.beta2))


def _step_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, recipe: GPTRecipe, teacher: GPT | None) -> torch.Tensor:
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    if teacher is None or recipe.kd_weight == 0:
        return loss
    with torch.no_grad():
        target = F.log_softmax(teacher(x).flatten(0, 1) / recipe.temperature, -1)
    kd = F.kl_div(F.log_softmax(logits.flatten(0, 1) / recipe.temperature, -1), target, log_target=True,
                  reduction="batchmean")
    return recipe.kd_weight * recipe.temperature ** 2 * kd + (1 - recipe.kd_weight) * loss


def train_gpt(recipe: GPTRecipe, train: torch.Tensor, val: torch.Tensor, vocab_size: int = 65, seed: int = 0,
              teacher: GPT | None = None, steps: int | None = None, progress: bool = False,
              init: GPT | None = None) -> tuple[GPT, dict]:
    """Train a GPT on token ids ``train``, measuring the loss on ``val`` as it goes.

    Parameters
    ----------
    recipe
        The model's shape and the training schedule.
    train, val
        1-D token ids (:func:`shakespeare_ids`).
    vocab_size
        The vocabulary's size.
    seed
        Seeds the initialization, the dropout and the batches.
    teacher
        The model whose logits a distilled recipe (``recipe.kd_weight > 0``) learns from.
    steps
        Stop after this many of the recipe's steps (the schedule is the recipe's; for a test
        that checks the start of the curve), or None for all.
    progress
        Print the losses at each measurement.
    init
        Train a copy of this GPT (left untouched; parametrizations such as pruning masks are kept)
        instead of a fresh one; the history then starts with its loss at step 0.

    Returns
    -------
    tuple
        ``(model, history)``: the model in eval mode and ``{"step": [...], "seconds": [...],
        "train_loss": [...], "val_loss": [...]}``: the time since the start (measurements
        included), the mean training loss since the previous measurement and the validation loss
        (:func:`lm_loss`), every ``recipe.eval_every`` steps and at the end.
    """
    if not isinstance(recipe, GPTRecipe):
        raise TypeError(f"recipe must be a GPTRecipe, got {type(recipe).__name__}")
    if recipe.kd_weight > 0 and not isinstance(teacher, GPT):
        raise ValueError("a distilled recipe (kd_weight > 0) needs its teacher GPT")
    steps = recipe.steps if steps is None else validate.integer(steps, "steps", 1, recipe.steps)
    if init is not None and not isinstance(init, GPT):
        raise TypeError(f"init must be a GPT or None, got {type(init).__name__}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = GPT(recipe.config(vocab_size)) if init is None else copy.deepcopy(init)
    optimizer = _optimizer(model, recipe)
    history, running = {"step": [], "seconds": [], "train_loss": [], "val_loss": []}, []
    start = time.perf_counter()
    if init is not None:
        history["step"].append(0)
        history["seconds"].append(0.0)
        history["train_loss"].append(float("nan"))
        history["val_loss"].append(lm_loss(model, val))
    for step in range(steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = _lr(recipe, step)
        loss = _step_loss(model, *lm_batch(train, recipe.batch_size, recipe.block_size, generator), recipe, teacher)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        running.append(loss.item())
        if (step + 1) % recipe.eval_every == 0 or step + 1 == steps:
            history["step"].append(step + 1)
            history["seconds"].append(time.perf_counter() - start)
            history["train_loss"].append(sum(running) / len(running))
            history["val_loss"].append(lm_loss(model, val))
            running = []
            if progress:
                print(f"step {step + 1}/{steps}: train {history['train_loss'][-1]:.4f}, "
                      f"val {history['val_loss'][-1]:.4f}", flush=True)
    return model.eval(), history


def gpt_filename(name: str, seed: int = 0) -> str:
    """The checkpoint file of GPT ``name`` trained with ``seed``.

    Parameters
    ----------
    name
        A key of :data:`GPTS`.
    seed
        The training seed, an int >= 0.

    Returns
    -------
    str
        For example ``"shakespeare_gpt-seed0.pt"``.
    """
    validate.choice(name, "name", GPTS)
    return f"{name}-seed{validate.integer(seed, 'seed', 0)}.pt"


def _pruned(recipe: PrunedGPTRecipe, train: torch.Tensor, seed: int) -> GPT:
    from ..models import gpt_blocks, gpt_layers
    from ..pruning import prune_oneshot

    base = load_gpt(recipe.base, seed)
    calibration = lm_calibration(train, recipe.calibration, recipe.finetune.block_size, seed=seed)
    return prune_oneshot(base, calibration, recipe.method, recipe.sparsity, recipe.n, recipe.m, gpt_layers(base),
                         gpt_blocks(base))


def make_gpt(name: str = "shakespeare_gpt", seed: int = 0, progress: bool = False) -> dict:
    """Train GPT ``name`` on Tiny Shakespeare: its checkpoint.

    A :class:`PrunedGPTRecipe` prunes its base one shot and fine-tunes the survivors; its history
    starts at step 0 with the pruned model's loss. The checkpoint holds the weights in float16
    (pruned weights as zeros), the recipe, the loss curve, the validation loss
    of the model as stored (float16 values, computed in float32), the training time and the
    number of threads.

    Parameters
    ----------
    name
        A key of :data:`GPTS`; a distilled recipe loads its teacher with :func:`load_gpt`.
    seed
        The training seed.
    progress
        Print the losses as training goes.

    Returns
    -------
    dict
        The checkpoint.
    """
    recipe = GPTS[validate.choice(name, "name", GPTS)]
    vocab, train, val = shakespeare_ids()
    start = time.perf_counter()
    if isinstance(recipe, PrunedGPTRecipe):
        model, history = train_gpt(recipe.finetune, train, val, len(vocab), seed, progress=progress,
                                   init=_pruned(recipe, train, seed))
        bake_(model)  # the masks' zeros become plain weights
    else:
        teacher = load_gpt(recipe.teacher, seed) if recipe.teacher else None
        model, history = train_gpt(recipe, train, val, len(vocab), seed, teacher, progress=progress)
    seconds = time.perf_counter() - start
    state = {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return {"state_dict": state, "model": name, "recipe": dataclasses.asdict(recipe), "seed": seed,
            "chars": vocab.chars, "history": history, "val_loss": lm_loss(model, val), "train_seconds": seconds,
            "threads": torch.get_num_threads(), "torch": str(torch.__version__)}


def gpt_checkpoint(name: str = "shakespeare_gpt", seed: int = 0) -> dict:
    """The checkpoint of GPT ``name``: shipped with the package, cached, or trained now (up to 30 min).

    Parameters
    ----------
    name, seed
        As :func:`make_gpt`.

    Returns
    -------
    dict
        The checkpoint (:func:`make_gpt`).
    """
    from ..store.core import stored

    recipe = GPTS[validate.choice(name, "name", GPTS)]
    return stored(gpt_filename(name, seed), dataclasses.asdict(recipe), lambda: make_gpt(name, seed))


def load_gpt(name: str = "shakespeare_gpt", seed: int = 0) -> GPT:
    """GPT ``name`` in eval mode, holding its stored float16 weights (computed in float32).

    Parameters
    ----------
    name, seed
        As :func:`make_gpt`.

    Returns
    -------
    GPT
        The model; its vocabulary is ``CharVocab(gpt_checkpoint(name, seed)["chars"])``.
    """
    checkpoint = gpt_checkpoint(name, seed)
    model = GPT(GPTS[name].config(len(checkpoint["chars"])))
    model.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    return model.eval()
