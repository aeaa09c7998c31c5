"""The distilled sentence-encoder student: the training loop's properties and the shipped checkpoint."""

import dataclasses

import pytest
import torch

from nncompress import text
from nncompress.models import bert_keep_layers
from nncompress.store import SHIPPED_DIR
from nncompress.text.student import _layer_map, _perturb

from test_text import random_ids, tiny_encoder

RECIPE = text.StudentRecipe(keep=(0, 2), epochs=10, lr=5e-3, batch_size=16)


def embedding_gap(student, teacher, ids):
    return float((text.encode(student, ids) - text.encode(teacher, ids)).pow(2).sum(1).mean())


def deep_teacher():
    """A 4-layer BERT without dropout whose layers 1 and 3 matter: dropping them moves the embeddings."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    bert = BertModel(config, add_pooling_layer=False)
    with torch.no_grad():
        for i in (1, 3):
            bert.encoder.layer[i].output.dense.weight.mul_(8)
    return text.SentenceEncoder(bert).eval()


def test_layer_map_matches_each_student_layer_to_the_last_teacher_layer_it_stands_for():
    assert _layer_map((0, 2, 4), 6) == [1, 3, 5]
    assert _layer_map((1, 3, 5), 6) == [2, 4, 5]
    assert _layer_map((0,), 6) == [5]


def test_perturb_keeps_cls_and_sep_and_only_deletes_or_masks():
    ids = random_ids(200, 20)
    recipe = dataclasses.replace(RECIPE, augment=1.0, perturb=0.3)
    out = _perturb(ids, recipe, 103, torch.Generator().manual_seed(0))
    changed = 0
    for before, after in zip(ids, out):
        b, a = before[before != 0], after[after != 0]
        assert a[0] == b[0] and a[-1] == b[-1]
        if len(a) < len(b):  # deleted: what is left is a subsequence
            it = iter(b.tolist())
            assert all(t in it for t in a.tolist())
        else:  # masked: every changed token became the mask
            assert len(a) == len(b) and bool(((a == b) | (a == 103)).all())
        changed += not torch.equal(a, b)
    assert changed > 150  # most sentences of more than 4 tokens are perturbed
    assert torch.equal(_perturb(ids, dataclasses.replace(RECIPE, augment=0.0), 103, torch.Generator()), ids)


def test_distillation_brings_the_student_closer_to_the_teacher():
    teacher = deep_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ids, held_out = random_ids(96, 12, seed=1), random_ids(64, 12, seed=2)
    dropped = bert_keep_layers(teacher, (0, 2))
    student, losses = text.distill_encoder(teacher, ids, RECIPE, seed=0, mask_id=3)
    assert len(losses) == 10 and losses[-1] < 0.1 * losses[0]
    assert embedding_gap(student, teacher, held_out) < 0.1 * embedding_gap(dropped, teacher, held_out)
    assert len(student.transformer.encoder.layer) == 2
    assert torch.equal(student.transformer.embeddings.word_embeddings.weight,
                       teacher.transformer.embeddings.word_embeddings.weight)  # the embeddings stay the teacher's
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    again, losses_again = text.distill_encoder(teacher, ids, RECIPE, seed=0, mask_id=3)
    assert losses_again == losses  # seeded: the same run twice


def test_distill_encoder_rejects_bad_arguments():
    teacher, ids = tiny_encoder(), random_ids(8, 6)
    with pytest.raises(TypeError, match="teacher"):
        text.distill_encoder(torch.nn.Linear(2, 2), ids, RECIPE)
    with pytest.raises(TypeError, match="ids"):
        text.distill_encoder(teacher, ids.float(), RECIPE)
    with pytest.raises(TypeError, match="recipe"):
        text.distill_encoder(teacher, ids, {"keep": (0,)})
    with pytest.raises(ValueError, match="keep"):
        text.distill_encoder(teacher, ids, dataclasses.replace(RECIPE, keep=(0, 5)))
    with pytest.raises(ValueError, match="name"):
        text.student_filename("minilm_l2")


@pytest.mark.parametrize("name", sorted(text.STUDENTS))
def test_shipped_student_is_small_and_scores_what_it_recorded(name):
    path = SHIPPED_DIR / text.student_filename(name)
    assert path.is_file() and path.stat().st_size <= 12e6
    checkpoint = text.student_checkpoint(name)
    assert checkpoint["recipe"] == dataclasses.asdict(text.STUDENTS[name])
    assert all(v.dtype == torch.float16 for v in checkpoint["layers"].values())
    assert not any("embeddings" in k for k in checkpoint["layers"])  # the teacher's table is not stored again
    teacher, tokenizer = text.load_minilm()
    student = text.encoder_student(teacher, name)
    assert len(student.transformer.encoder.layer) == len(text.STUDENTS[name].keep)
    dev = text.tokenize_pairs(tokenizer, text.load_stsb().dev)
    assert text.sts_spearman(student, dev) == pytest.approx(checkpoint["dev_spearman"], abs=0.02)
