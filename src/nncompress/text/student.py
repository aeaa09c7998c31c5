"""A shallower sentence encoder distilled from all-MiniLM-L6-v2 on unlabeled sentences.

The student starts as the teacher with only some of its layers (every other one, as DistilBERT
was initialized from BERT) and shares the teacher's embeddings, which stay frozen. It is
trained to reproduce the teacher on sentences alone, no labels: the teacher's sentence embedding
(the mean squared error of Reimers & Gurevych's multilingual distillation), its last hidden
state token by token, and, for each student layer, the hidden state of the teacher layer it
replaces. STS-B's training sentences are the unlabeled text (with, for one recipe, lines of Tiny
Shakespeare); in a share of the batches' sentences 15 % of the tokens are deleted or replaced by
``[MASK]``, so each epoch shows new inputs.

The shipped student (:func:`encoder_student`) stores only its own transformer layers, in float16;
it is evaluated as loaded, with those float16 values.

References: sanh2019distilbert, reimers2020making, jiao2020tinybert
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from ..models import bert_keep_layers
from .encoder import SentenceEncoder, load_minilm, tokenize, tokenize_pairs, sts_spearman

__all__ = ["StudentRecipe", "STUDENTS", "distill_encoder", "student_filename", "student_checkpoint",
           "make_student", "encoder_student"]


@dataclass(frozen=True)
class StudentRecipe:
    """How a student encoder is made.

    Attributes
    ----------
    keep
        The teacher layers the student starts from, in order.
    epochs, lr, batch_size, weight_decay
        AdamW for ``epochs`` passes over the sentences, a linear warm-up over the first tenth of
        the steps to ``lr`` and a linear decay to zero.
    augment
        The share of sentences whose inner tokens are perturbed in each batch.
    perturb
        The share of a perturbed sentence's inner tokens deleted (half the sentences) or masked.
    hidden_weight
        The weight of the intermediate hidden-state terms (0 leaves only the last layer's).
    shakespeare
        How many lines of Tiny Shakespeare's training part (:func:`shakespeare_lines`, drawn with
        the seed) join STS-B's sentences as unlabeled text: more varied inputs, on which the
        student learns to follow the teacher beyond STS-B's training sentences.
    """

    keep: tuple[int, ...]
    epochs: int
    lr: float
    batch_size: int = 32
    weight_decay: float = 0.01
    augment: float = 0.5
    perturb: float = 0.15
    hidden_weight: float = 1.0
    shakespeare: int = 0


# "minilm_l3" starts from alternate layers, as DistilBERT did; "minilm_l3_035" from the three layers
# whose model, without training, scores best on STS-B's dev split (0, 3 and 5: the last one stays);
# "minilm_l3_035s" adds as many lines of Tiny Shakespeare to the unlabeled text, for half the epochs.
STUDENTS = {"minilm_l3": StudentRecipe(keep=(0, 2, 4), epochs=12, lr=2e-4),
            "minilm_l3_035": StudentRecipe(keep=(0, 3, 5), epochs=12, lr=2e-4),
            "minilm_l3_035s": StudentRecipe(keep=(0, 3, 5), epochs=6, lr=2e-4, shakespeare=10566)}


def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=1)


def _perturb(batch: torch.Tensor, recipe: StudentRecipe, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """Delete or mask ``recipe.perturb`` of the inner tokens of a share ``recipe.augment`` of the sentences."""
    rows = []
    for row in batch:
        tokens = row[row != 0]
        if len(tokens) > 4 and float(torch.rand(1, generator=generator)) < recipe.augment:
            chosen = torch.rand(len(tokens), generator=generator) < recipe.perturb
            chosen[0] = chosen[-1] = False  # [CLS] and [SEP] stay
            if float(torch.rand(1, generator=generator)) < 0.5:
                tokens = tokens[~chosen]
            else:
                tokens = torch.where(chosen, torch.full_like(tokens, mask_id), tokens)
        rows.append(tokens)
    width = max(len(r) for r in rows)
    return torch.stack([F.pad(r, (0, width - len(r))) for r in rows])


def _layer_map(keep: Sequence[int], depth: int) -> list[int]:
    """The teacher layer whose output each student layer is matched to: the last before the next kept one."""
    return [nxt - 1 for nxt in list(keep[1:]) + [depth]]


def _distill_loss(student: SentenceEncoder, teacher: SentenceEncoder, batch: torch.Tensor, matched: list[int],
                  hidden_weight: float) -> torch.Tensor:
    """The student's loss on one batch: sentence embeddings, last hidden states, matched hidden states."""
    mask = batch != 0
    with torch.no_grad():
        target = teacher.transformer(input_ids=batch, attention_mask=mask.long(), output_hidden_states=True)
    out = student.transformer(input_ids=batch, attention_mask=mask.long(), output_hidden_states=True)
    tokens = mask.unsqueeze(-1).float()

    def token_mse(a, b):
        return ((a - b) ** 2 * tokens).sum() / tokens.sum()

    last, target_last = out.last_hidden_state, target.last_hidden_state
    loss = F.mse_loss(_pool(last, mask), _pool(target_last, mask)) * last.shape[-1] + token_mse(last, target_last)
    for k, t in enumerate(matched[:-1]):
        loss = loss + hidden_weight * token_mse(out.hidden_states[k + 1], target.hidden_states[t + 1])
    return loss


def distill_encoder(teacher: SentenceEncoder, ids: torch.Tensor, recipe: StudentRecipe, seed: int = 0,
                    mask_id: int = 103, progress=None) -> tuple[SentenceEncoder, list[float]]:
    """Distill a shallower student from ``teacher`` on the sentences ``ids``.

    Parameters
    ----------
    teacher
        The teacher encoder (a :class:`SentenceEncoder` over a Hugging Face BERT; left untouched).
    ids
        int64 ``(sentences, length)`` right-padded token ids of unlabeled sentences.
    recipe
        A :class:`StudentRecipe`.
    seed
        Seeds the order of the sentences and the perturbations.
    mask_id
        The ``[MASK]`` token's id (103 in BERT's vocabulary).
    progress
        Called as ``progress(epoch, mean_loss, student)`` after every epoch, when given.

    Returns
    -------
    tuple
        ``(student, losses)``: the student in eval mode and the mean loss of every epoch.

    Raises
    ------
    TypeError, ValueError
        For a teacher that is not a sentence encoder, or bad ids.

    References
    ----------
    sanh2019distilbert, reimers2020making, jiao2020tinybert
    """
    if not isinstance(teacher, SentenceEncoder):
        raise TypeError(f"teacher must be a SentenceEncoder, got {type(teacher).__name__}")
    validate.tensor(ids, "ids", dim=2)
    if ids.is_floating_point():
        raise TypeError("ids must be an integer tensor of token ids")
    if not isinstance(recipe, StudentRecipe):
        raise TypeError(f"recipe must be a StudentRecipe, got {type(recipe).__name__}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = bert_keep_layers(teacher, recipe.keep)
    depth = len(teacher.transformer.encoder.layer)
    matched = _layer_map(recipe.keep, depth)
    for p in student.transformer.embeddings.parameters():
        p.requires_grad_(False)
    teacher.eval()
    trained = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * -(-len(ids) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps, pct_start=0.1,
                                                   anneal_strategy="linear")
    lengths = (ids != 0).sum(1)
    losses = []
    for epoch in range(recipe.epochs):
        student.train()
        total, batches = 0.0, 0
        for rows in torch.randperm(len(ids), generator=generator).split(recipe.batch_size):
            batch = ids[rows, :int(lengths[rows].max())]
            if recipe.augment:
                batch = _perturb(batch, recipe, mask_id, generator)
            loss = _distill_loss(student, teacher, batch, matched, recipe.hidden_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, batches = total + loss.item(), batches + 1
        student.eval()
        losses.append(total / batches)
        if progress is not None:
            progress(epoch, losses[-1], student)
    return student.eval(), losses


def student_filename(name: str, seed: int = 0) -> str:
    """The checkpoint file of student ``name`` made with ``seed``.

    Parameters
    ----------
    name
        A key of :data:`STUDENTS`.
    seed
        The training seed, an int >= 0.

    Returns
    -------
    str
        For example ``"minilm_l3-distilled-seed0.pt"``.
    """
    validate.choice(name, "name", STUDENTS)
    return f"{name}-distilled-seed{validate.integer(seed, 'seed', 0)}.pt"


def _unlabeled(stsb, recipe: StudentRecipe, seed: int) -> list[str]:
    """STS-B's distinct training sentences, and ``recipe.shakespeare`` lines of Tiny Shakespeare's training part."""
    sentences = sorted(set(stsb.train.sentences()))
    if recipe.shakespeare:
        from .shakespeare import load_tinyshakespeare, shakespeare_lines, shakespeare_split

        lines = shakespeare_lines(shakespeare_split(load_tinyshakespeare())[0])
        order = torch.randperm(len(lines), generator=torch.Generator().manual_seed(seed))
        sentences += [lines[i] for i in order[:recipe.shakespeare].tolist()]
    return sentences


def make_student(name: str = "minilm_l3", seed: int = 0, progress: bool = False) -> dict:
    """Distill student ``name`` from all-MiniLM-L6-v2 on STS-B's training sentences: its checkpoint.

    The checkpoint holds the student's transformer layers in float16 (not the embeddings, which
    are the teacher's), the recipe, and the dev and test Spearman of the student as stored.

    Parameters
    ----------
    name
        A key of :data:`STUDENTS`.
    seed
        The training seed.
    progress
        Print each epoch's loss and dev Spearman.

    Returns
    -------
    dict
        The checkpoint.
    """
    from .stsb import load_stsb

    recipe = STUDENTS[validate.choice(name, "name", STUDENTS)]
    teacher, tokenizer = load_minilm()
    stsb = load_stsb()
    ids = tokenize(tokenizer, _unlabeled(stsb, recipe, seed))
    dev = tokenize_pairs(tokenizer, stsb.dev)

    def report(epoch, loss, student):
        if progress:
            print(f"epoch {epoch + 1}/{recipe.epochs}: loss {loss:.3f}, dev Spearman {sts_spearman(student, dev):.2f}",
                  flush=True)

    start = time.perf_counter()
    student, losses = distill_encoder(teacher, ids, recipe, seed, tokenizer.mask_token_id, report)
    seconds = time.perf_counter() - start
    layers = {k: v.detach().to(torch.float16).clone() for k, v in student.transformer.encoder.state_dict().items()}
    stored = _assemble(teacher, recipe, layers)
    return {"layers": layers, "model": name, "recipe": dataclasses.asdict(recipe), "seed": seed, "losses": losses,
            "dev_spearman": sts_spearman(stored, dev), "test_spearman": sts_spearman(stored, tokenize_pairs(tokenizer, stsb.test)),
            "train_seconds": seconds, "threads": torch.get_num_threads(), "torch": str(torch.__version__)}


def _assemble(teacher: SentenceEncoder, recipe: StudentRecipe, layers: dict) -> SentenceEncoder:
    student = bert_keep_layers(teacher, recipe.keep)
    student.transformer.encoder.load_state_dict({k: v.float() for k, v in layers.items()})
    return student.eval()


def student_checkpoint(name: str = "minilm_l3", seed: int = 0) -> dict:
    """The checkpoint of student ``name``: shipped with the package, cached, or distilled now (about 30 min).

    Parameters
    ----------
    name, seed
        As :func:`make_student`.

    Returns
    -------
    dict
        The checkpoint (:func:`make_student`).
    """
    from ..store.core import stored

    recipe = STUDENTS[validate.choice(name, "name", STUDENTS)]
    return stored(student_filename(name, seed), dataclasses.asdict(recipe), lambda: make_student(name, seed))


def encoder_student(teacher: SentenceEncoder | None = None, name: str = "minilm_l3", seed: int = 0) -> SentenceEncoder:
    """The distilled student as a :class:`SentenceEncoder` in eval mode, with the float16-stored layers.

    Parameters
    ----------
    teacher
        all-MiniLM-L6-v2 (:func:`load_minilm`), whose embeddings the student shares; loaded when None.
    name, seed
        As :func:`make_student`.

    Returns
    -------
    SentenceEncoder
        The student; its own layers hold the stored float16 values (computed in float32).

    References
    ----------
    sanh2019distilbert, reimers2020making
    """
    teacher = load_minilm()[0] if teacher is None else teacher
    if not isinstance(teacher, SentenceEncoder):
        raise TypeError(f"teacher must be a SentenceEncoder, got {type(teacher).__name__}")
    checkpoint = student_checkpoint(name, seed)
    return _assemble(teacher, STUDENTS[name], checkpoint["layers"])
