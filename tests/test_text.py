"""Sentence encoders on STS-B: the loader, the model against sentence-transformers, encoding, metric, harness."""

import hashlib
import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import nncompress as nc
from nncompress import text
from nncompress.data import ChecksumError

SHARED = nc.data.data_dir()


@pytest.fixture(scope="module")
def stsb():
    return text.load_stsb()


@pytest.fixture(scope="module")
def minilm():
    return text.load_minilm()


def tiny_encoder(seed=0, layers=2):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return text.SentenceEncoder(BertModel(config, add_pooling_layer=False)).eval()


def random_ids(n, longest, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, longest + 1, (n,), generator=g)
    ids = torch.zeros(n, longest, dtype=torch.long)
    for i, length in enumerate(lengths.tolist()):
        ids[i, :length] = torch.randint(1, 120, (length,), generator=g)
    return ids


# --- data -------------------------------------------------------------------------------------

def test_stsb_splits_have_the_published_sizes(stsb):
    assert (len(stsb.train), len(stsb.dev), len(stsb.test)) == (5749, 1500, 1379)
    assert stsb.split("test") is stsb.test
    assert float(stsb.test.scores.min()) >= 0 and float(stsb.test.scores.max()) <= 5
    assert stsb.test.first[0] == "A girl is styling her hair." and stsb.test.scores[0] == 2.5
    with pytest.raises(ValueError, match="name"):
        stsb.split("validation")


def test_read_sts_ignores_trailing_fields_and_rejects_bad_lines():
    good = "g\tf\t2012\t1\t3.5\tA cat.\tA dog.\tnote\textra\n".encode()
    pairs = text.read_sts(good)
    assert pairs.first == ("A cat.",) and pairs.second == ("A dog.",) and pairs.scores.tolist() == [3.5]
    with pytest.raises(ValueError, match="line 1 has 5"):
        text.read_sts(b"g\tf\t2012\t1\t3.5\n")
    with pytest.raises(ValueError, match="outside"):
        text.read_sts("g\tf\t2012\t1\t5.5\ta\tb\n".encode())


def _copy_stsb(tmp_path):
    folder = tmp_path / "stsb"
    folder.mkdir(parents=True)
    for name in text.STSB_FILES:
        shutil.copy(SHARED / "stsb" / name, folder / name)
    return folder


def test_corrupt_split_is_detected_and_never_used(tmp_path):
    folder = _copy_stsb(tmp_path)
    payload = bytearray((folder / "sts-dev.csv").read_bytes())
    payload[100] ^= 1
    (folder / "sts-dev.csv").write_bytes(bytes(payload))
    with pytest.raises(ChecksumError, match="sts-dev.csv"):
        text.load_stsb(tmp_path)
    (folder / "sts-test.csv").write_bytes((SHARED / "stsb" / "sts-test.csv").read_bytes()[:1000])  # partial
    (folder / "sts-dev.csv").write_bytes((SHARED / "stsb" / "sts-dev.csv").read_bytes())
    with pytest.raises(ChecksumError, match="sts-test.csv"):
        text.load_stsb(tmp_path)


def _archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"stsbenchmark/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path.as_uri()


def test_missing_split_is_downloaded_checked_and_written_atomically(tmp_path):
    folder = _copy_stsb(tmp_path / "root")
    (folder / "sts-train.csv").unlink()
    good = {name: (SHARED / "stsb" / name).read_bytes() for name in text.STSB_FILES}
    bad = dict(good, **{"sts-train.csv": good["sts-train.csv"][:-10]})
    bad_url, good_url = _archive(tmp_path / "bad.tar.gz", bad), _archive(tmp_path / "good.tar.gz", good)
    with pytest.raises(ChecksumError, match="sts-train.csv"):
        text.load_stsb(tmp_path / "root", mirrors=(bad_url,))
    assert sorted(p.name for p in folder.iterdir()) == ["sts-dev.csv", "sts-test.csv"]  # nothing partial left
    data = text.load_stsb(tmp_path / "root", mirrors=("file:///no/such/archive.tar.gz", good_url))
    assert len(data.train) == 5749
    assert hashlib.sha256((folder / "sts-train.csv").read_bytes()).hexdigest() == text.STSB_FILES["sts-train.csv"]
    assert sorted(p.name for p in folder.iterdir()) == ["sts-dev.csv", "sts-test.csv", "sts-train.csv"]


def test_missing_split_without_a_mirror_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="sts-dev.csv"):
        text.load_stsb(tmp_path, mirrors=())
    with pytest.raises(ValueError, match="files must name"):
        text.load_stsb(tmp_path, files={"sts-dev.csv": "0" * 64})


# --- the model --------------------------------------------------------------------------------

def test_weights_with_another_hash_are_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ChecksumError, match="sha256"):
        text.load_minilm(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        text.load_minilm(tmp_path / "empty")


def test_embeddings_equal_sentence_transformers(minilm, stsb):
    from sentence_transformers import SentenceTransformer

    encoder, tokenizer = minilm
    sentences = stsb.test.sentences()[:150] + stsb.dev.sentences()[:50]
    reference = SentenceTransformer(str(text.minilm_path()), device="cpu").encode(sentences, batch_size=16)
    ours = text.encode(encoder, text.tokenize(tokenizer, sentences), batch_size=7)
    assert ours.shape == (200, 384)
    assert np.abs(ours.numpy() - reference).max() < 1e-5
    assert nc.measure.count_params(encoder) == 22_565_376  # the checkpoint's 22.71 M less the unused pooler


def test_padding_and_batching_do_not_change_embeddings():
    encoder = tiny_encoder()
    ids = random_ids(20, 12)
    padded = torch.cat([ids, torch.zeros(20, 9, dtype=torch.long)], 1)
    one = text.encode(encoder, ids, batch_size=1)
    assert torch.allclose(text.encode(encoder, padded, batch_size=64), one, atol=1e-6)
    assert torch.allclose(encoder(padded[3:4]), one[3:4], atol=1e-6)  # one sentence cut from a padded tensor
    assert torch.allclose(one.norm(dim=1), torch.ones(20), atol=1e-6)
    with pytest.raises(ValueError, match="padding"):
        encoder(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        text.encode(encoder, ids.float())
    with pytest.raises(ValueError, match="batch_size"):
        text.encode(encoder, ids, batch_size=0)


def test_tokenize_rejects_bad_input(minilm):
    _, tokenizer = minilm
    with pytest.raises(TypeError, match="sequence of str"):
        text.tokenize(tokenizer, "one sentence")
    with pytest.raises(ValueError, match="empty"):
        text.tokenize(tokenizer, [])
    with pytest.raises(ValueError, match="max_length"):
        text.tokenize(tokenizer, ["a"], max_length=1)
    assert text.tokenize(tokenizer, ["word " * 400]).shape == (1, 256)


def test_tokenized_pairs_share_sentences_and_subset_consistently(minilm, stsb):
    _, tokenizer = minilm
    pairs = text.tokenize_pairs(tokenizer, stsb.test)
    assert len(pairs) == 1379 and len(pairs.ids) == len(stsb.test.sentences()) < 2 * 1379
    sub = pairs.subset(100, seed=3)
    assert len(sub) == 100 and len(sub.ids) <= 200
    rows = torch.randperm(1379, generator=torch.Generator().manual_seed(3))[:100].sort().values
    assert torch.equal(sub.scores, pairs.scores[rows])
    assert torch.equal(sub.ids[sub.first], pairs.ids[pairs.first[rows]])
    with pytest.raises(ValueError, match="n"):
        pairs.subset(0)


# --- the metric -------------------------------------------------------------------------------

def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 5, (300,), generator=g).double(), torch.randn(300, generator=g)
    assert abs(text.spearman(x, y) - spearmanr(x.numpy(), y.numpy()).statistic) < 1e-12
    assert text.spearman(y, y.exp()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        text.spearman(x, y[:10])


def test_sts_spearman_is_100_for_an_encoder_that_knows_the_scores():
    ids = torch.tensor([[5, 0], [6, 0], [7, 0], [8, 9]])
    angles = torch.tensor([0.0, 0.3, 0.9, 1.4])

    class Oracle(torch.nn.Module):  # embeds token t at angle angles[t - 5] on a circle
        def forward(self, input_ids):
            a = angles[input_ids[:, 0] - 5]
            return torch.stack([a.cos(), a.sin()], 1)

    pairs = text.TokenizedPairs(ids, torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3]),
                                torch.tensor([4.5, 2.0, 0.5], dtype=torch.float64))
    assert text.sts_spearman(Oracle(), pairs) == pytest.approx(100.0)
    flipped = text.TokenizedPairs(pairs.ids, pairs.first, pairs.second, -pairs.scores)
    assert text.sts_spearman(Oracle(), flipped) == pytest.approx(-100.0)
    assert torch.allclose(text.similarities(Oracle(), pairs), (angles[1:] - angles[0]).cos())  # cos of the angle between
    with pytest.raises(TypeError, match="TokenizedPairs"):
        text.similarities(Oracle(), ids)


def test_sts_fidelity_matches_scipy_and_the_cosines_by_hand():
    reference_model, other = tiny_encoder(0), tiny_encoder(1)
    ids = random_ids(40, 12, seed=3)
    g = torch.Generator().manual_seed(4)
    pairs = text.TokenizedPairs(ids, torch.arange(20), torch.arange(20, 40), 5 * torch.rand(20, generator=g).double())
    reference = text.encode(reference_model, ids)
    got = text.sts_fidelity(other, pairs, reference)
    mine = text.encode(other, ids).double().numpy()
    ref = reference.double().numpy()

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    sims, ref_sims = cos(mine[:20], mine[20:]), cos(ref[:20], ref[20:])
    assert got["spearman"] == pytest.approx(100 * spearmanr(sims, pairs.scores.numpy()).statistic, abs=1e-6)
    assert got["spearman"] == pytest.approx(text.sts_spearman(other, pairs), abs=1e-6)
    assert got["agreement"] == pytest.approx(spearmanr(sims, ref_sims).statistic, abs=1e-6)
    assert got["error"] == pytest.approx(float(np.mean(1 - cos(mine, ref))), abs=1e-6)
    same = text.sts_fidelity(reference_model, pairs, reference)
    assert same["error"] == pytest.approx(0.0, abs=1e-6) and same["agreement"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one embedding per sentence"):
        text.sts_fidelity(other, pairs, reference[:5])
    with pytest.raises(TypeError, match="TokenizedPairs"):
        text.sts_fidelity(other, ids, reference)


# --- the harness ------------------------------------------------------------------------------

def test_flops_per_sentence_equals_counting_every_length():
    encoder = tiny_encoder()
    ids = random_ids(40, 30, seed=1)
    lengths = (ids != 0).sum(1)
    brute = sum(nc.measure.count_flops(encoder, inputs=ids[i:i + 1, :int(lengths[i])]) for i in range(40)) / 40
    assert text.flops_per_sentence(encoder, ids) == pytest.approx(brute, rel=1e-12)
    # attention makes it quadratic: a sentence twice as long costs more than twice as much
    short, long = (nc.measure.count_flops(encoder, inputs=torch.full((1, n), 5)) for n in (10, 20))
    assert long > 2 * short


def test_profile_encoders_measures_everything_in_turns():
    encoders = {"two layers": tiny_encoder(layers=2), "one layer": tiny_encoder(layers=1)}
    ids = random_ids(50, 16, seed=2)
    pairs = text.TokenizedPairs(ids, torch.arange(0, 25), torch.arange(25, 50),
                                torch.linspace(0, 5, 25, dtype=torch.float64))
    profiles = text.profile_encoders(encoders, pairs, batch_sizes=(1, 8), single=10, min_run_time=0.05,
                                     scores={"one layer": 12.5}, nbytes={"one layer": 1234})
    two, one = profiles
    assert one.score == 12.5 and one.bytes == 1234 and one.bytes_source == "custom"
    assert two.score == pytest.approx(text.sts_spearman(encoders["two layers"], pairs))
    assert two.params == nc.measure.count_params(encoders["two layers"]) > one.params
    assert two.flops > one.flops > 0 and set(two.latency) == {1, 8} and two.metric == "spearman"
    table = nc.measure.comparison_table(profiles)
    assert table.columns[1] == "spearman"
    with pytest.raises(ValueError, match="nbytes names"):
        text.profile_encoders(encoders, pairs, nbytes={"three layers": 1})


def test_padded_tokens_counts_what_encode_computes_in_either_order():
    encoder = tiny_encoder()
    ids = random_ids(30, 20, seed=4)
    lengths = (ids != 0).sum(1)
    batches = [lengths[i:i + 8] for i in range(0, 30, 8)]
    assert text.padded_tokens(ids, 8, sort=False) == sum(len(b) * int(b.max()) for b in batches)
    sorted_lengths = lengths.sort(descending=True).values
    assert text.padded_tokens(ids, 8) == sum(len(b) * int(b.max()) for b in sorted_lengths.split(8))
    assert int(lengths.sum()) <= text.padded_tokens(ids, 8) <= text.padded_tokens(ids, 8, sort=False)
    assert torch.allclose(text.encode(encoder, ids, 8, sort=False), text.encode(encoder, ids, 8), atol=1e-6)


# --- Tiny Shakespeare ---------------------------------------------------------------------------

def test_tinyshakespeare_is_checked_split_as_nanogpt_and_downloaded_atomically(tmp_path):
    corpus = text.load_tinyshakespeare(SHARED)
    assert len(corpus) == 1_115_394 and len(set(corpus)) == 65
    train, val = text.shakespeare_split(corpus)
    assert len(train) == 1_003_854 and train + val == corpus  # int(0.9 n), as nanoGPT's prepare.py
    lines = text.shakespeare_lines(train)
    assert lines[0] == "Before we proceed any further, hear me speak." and not any(l.endswith(":") for l in lines)
    assert all(len(l.split()) >= 4 for l in lines) and len(set(lines)) == len(lines)
    source = SHARED / "tinyshakespeare" / "input.txt"
    cut = tmp_path / "cut.txt"
    cut.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(ChecksumError, match="sha256"):
        text.load_tinyshakespeare(tmp_path / "root", urls=(cut.as_uri(),))
    assert not (tmp_path / "root" / "tinyshakespeare" / "input.txt").exists()  # nothing partial left
    assert not list((tmp_path / "root" / "tinyshakespeare").iterdir())
    assert text.load_tinyshakespeare(tmp_path / "root", urls=("file:///no/such/file", source.as_uri())) == corpus
    (tmp_path / "root" / "tinyshakespeare" / "input.txt").write_bytes(source.read_bytes()[:-1])  # corrupt on disk
    with pytest.raises(ChecksumError):
        text.load_tinyshakespeare(tmp_path / "root", urls=(source.as_uri(),))
    with pytest.raises(FileNotFoundError, match="input.txt"):
        text.load_tinyshakespeare(tmp_path / "empty", urls=())
    with pytest.raises(ValueError, match="train_fraction"):
        text.shakespeare_split(corpus, 1.0)
    with pytest.raises(TypeError, match="text"):
        text.shakespeare_lines(b"bytes")
