"""nncompress.fileformat: the compressed file restores any model bitwise, its size is every byte
written, Huffman coding and sparsity shrink it, and damaged files are refused."""

import copy
import hashlib
import json
import struct
import zlib

import pytest
import torch
from torch import nn

from nncompress import coding, measure, parametrizations, pruning
from nncompress.fileformat import MAGIC, VERSION, CorruptFileError, code_streams, file_bytes, index_widths, load, save
from nncompress.models import LeNet5, MLP
from nncompress.sharing import SharedWeight, apply_sharing, shared_layers


def pruned_mlp(seed=0):
    torch.manual_seed(seed)
    model = MLP((32, 16))
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.02] = 0.0  # some pruned weights
    return model


def plain_state(model):
    """The state dict of ``model`` with every parametrization baked: what a file must restore."""
    return parametrizations.bake(model).state_dict()


def assert_same_state(restored, model):
    want = plain_state(model)
    got = restored.state_dict()
    assert got.keys() == want.keys()
    for key, value in got.items():
        assert torch.equal(value, want[key]), key


@pytest.mark.parametrize("huffman", [True, False])
@pytest.mark.parametrize("index_bits", [3, 5, 8])
def test_save_load_round_trips_bitwise(tmp_path, huffman, index_bits):
    model = apply_sharing(pruned_mlp(), {"fc1": 4, "fc2": 5, "fc3": 5})
    before = copy.deepcopy(model.state_dict())
    path = tmp_path / "model.nncz"
    size = save(model, path, index_bits=index_bits, huffman=huffman)
    assert size == path.stat().st_size
    assert_same_state(load(path, MLP((32, 16))), model)
    assert shared_layers(model) and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("huffman", [True, False])
def test_dense_shared_layers_need_no_indices(tmp_path, huffman):
    torch.manual_seed(1)
    dense = apply_sharing(MLP((32, 16)), 2)  # every weight has a code
    size = save(dense, tmp_path / "d", huffman=huffman)
    assert_same_state(load(tmp_path / "d", MLP((32, 16))), dense)
    weights = sum(m.weight.numel() for m in (dense.fc1, dense.fc2, dense.fc3))
    biases = sum(m.bias.numel() for m in (dense.fc1, dense.fc2, dense.fc3))
    if not huffman:  # 2 bits per weight, float32 biases and codebooks, and a header
        assert 0 < size - (weights * 2 // 8 + 4 * biases + 3 * 4 * 4) < 1500


def test_convolutional_and_masked_models_are_stored_with_their_effective_weights(tmp_path):
    torch.manual_seed(0)
    model = LeNet5((4, 6), hidden=16)
    masked = pruning.prune_magnitude(model, 0.8, layers="fc1")  # a mask parametrization, not baked
    shared = apply_sharing(parametrizations.bake(masked), {"conv1": 3, "conv2": 4})
    for source in (masked, shared):
        path = tmp_path / "lenet.nncz"
        save(source, path)
        restored = load(path, LeNet5((4, 6), hidden=16))
        assert_same_state(restored, source)
        assert int(torch.count_nonzero(restored.fc1.weight)) == int(torch.count_nonzero(masked.fc1.weight))


def test_the_file_of_a_transformer_like_model_round_trips(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.LayerNorm(16), nn.Linear(16, 16))
    shared = apply_sharing(model, 3, layers=nn.Linear)
    save(shared, tmp_path / "m")
    torch.manual_seed(1)
    assert_same_state(load(tmp_path / "m", nn.Sequential(nn.Embedding(50, 16), nn.LayerNorm(16), nn.Linear(16, 16))),
                      shared)


def test_huffman_and_sparsity_make_files_smaller(tmp_path):
    model = apply_sharing(pruned_mlp(), {"fc1": 4})
    plain = save(model, tmp_path / "a", huffman=False)
    coded = save(model, tmp_path / "b", huffman=True)
    dense = save(MLP((32, 16)), tmp_path / "c")
    assert coded < plain < dense


def test_file_bytes_is_the_size_of_the_saved_file(tmp_path):
    model = apply_sharing(MLP((32,)), 3)
    assert file_bytes(model, index_bits=4) == save(model, tmp_path / "m", index_bits=4) == (tmp_path / "m").stat().st_size


def test_a_pruned_model_file_is_smaller_than_the_float_model():
    model = pruning.prune_magnitude(MLP((64,)), 0.9)  # masks attached, not baked
    # 10 % of the weights survive, each stored as a float32 value and a short index
    assert file_bytes(model) < 0.2 * measure.serialized_bytes(MLP((64,)))


def test_code_streams_are_what_save_codes(tmp_path):
    model = MLP((64,))
    with torch.no_grad():
        model.fc1.weight[:, ::3] = 0  # a pruned layer: relative indices
    model = apply_sharing(model, 3)
    streams = code_streams(model, index_bits=3)
    assert set(streams["fc1"]) == {"gaps", "values"} and set(streams["fc2"]) == {"codes"}
    layer = shared_layers(model)["fc1"]
    flat = coding.relative_decode(streams["fc1"]["gaps"], streams["fc1"]["values"], layer.codes.numel())
    assert torch.equal(flat, torch.where(layer.mask, layer.codes + 1, 0).reshape(-1))
    # the Huffman-coded file holds at least the streams' Huffman bits (plus header, codebooks, biases)
    bits = sum(coding.HuffmanCode.from_symbols(s).mean_length(coding.symbol_counts(s)) * len(s)
               for layer_streams in streams.values() for s in layer_streams.values())
    packed = save(model, tmp_path / "packed", index_bits=3, huffman=False)
    coded = save(model, tmp_path / "coded", index_bits=3)
    assert coded < packed and coded >= bits / 8


def test_the_header_is_compressed_json_listing_every_tensor(tmp_path):
    model = apply_sharing(pruned_mlp(), 4)
    data = (tmp_path / "m").read_bytes() if save(model, tmp_path / "m") else b""
    (n,) = struct.unpack("<I", data[5:9])
    header = json.loads(zlib.decompress(data[9:9 + n]))
    assert [t["name"] for t in header["tensors"]] == list(plain_state(model))
    assert n < len(json.dumps(header, separators=(",", ":")))  # compression pays for itself


def test_auto_index_width_is_the_smallest_file_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = MLP((128, 64))
    with torch.no_grad():
        for layer, keep in ((model.fc1, 0.03), (model.fc2, 0.3)):  # long gaps in fc1, short in fc2
            layer.weight[torch.rand(layer.weight.shape) > keep] = 0
    model = apply_sharing(model, 4)
    widths = index_widths(model)
    assert set(widths) == {"fc1", "fc2"} and widths["fc1"] > widths["fc2"]  # fc3 is dense: no indices
    for huffman in (True, False):
        auto = save(model, tmp_path / "auto", index_bits="auto", huffman=huffman)
        assert_same_state(load(tmp_path / "auto", MLP((128, 64))), model)
        fixed = {b: file_bytes(model, index_bits=b, huffman=huffman) for b in range(1, 17)}
        assert auto <= min(fixed.values()) + 8  # the header's tables may differ by a few bytes
        assert auto < max(fixed.values())
    per_layer = code_streams(model, index_bits="auto")["fc1"]
    assert torch.equal(per_layer["gaps"], code_streams(model, index_bits=widths["fc1"])["fc1"]["gaps"])


@pytest.mark.parametrize("call", [
    lambda m, p: save(m, p, index_bits="best"), lambda m, p: index_widths(m, index_bits="8"),
])
def test_index_bits_names_auto_among_the_allowed_values(tmp_path, call):
    with pytest.raises(ValueError, match=r"index_bits must be an int in \[1, 16\] or 'auto'"):
        call(apply_sharing(pruned_mlp(), 2), tmp_path / "m")


@pytest.mark.parametrize("call", [
    lambda m, p: save(m, p, index_bits=0), lambda m, p: save(m, p, index_bits=17),
    lambda m, p: file_bytes(m, index_bits=0), lambda m, p: code_streams(m, index_bits=0),
])
def test_a_bad_index_width_is_reported_as_index_bits(tmp_path, call):
    model = apply_sharing(pruned_mlp(), 2)
    with pytest.raises(ValueError, match=r"index_bits must be an int in \[1, 16\]"):
        call(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_save_and_load_reject_bad_arguments(tmp_path):
    model = MLP((8,))
    with pytest.raises(TypeError, match="index_bits must be an int"):
        save(model, tmp_path / "m", index_bits=4.0)
    with pytest.raises(TypeError, match="huffman must be a bool"):
        save(model, tmp_path / "m", huffman="yes")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        save(model.state_dict(), tmp_path / "m")
    save(model, tmp_path / "m")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        load(tmp_path / "m", model.state_dict())


def test_truncated_or_corrupted_files_are_rejected_and_nothing_is_loaded(tmp_path):
    model = apply_sharing(pruned_mlp(), {"fc1": 4})
    path = tmp_path / "m.nncz"
    save(model, path)
    data = path.read_bytes()
    target = MLP((32, 16))
    untouched = copy.deepcopy(target.state_dict())
    for broken in (data[:-1], data[: len(data) // 2], data[:20], b"", b"PK\x03\x04" + data[4:]):
        path.write_bytes(broken)
        with pytest.raises(CorruptFileError):
            load(path, target)
    for position in (5, 12, len(data) // 2, len(data) - 40):
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(CorruptFileError, match="checksum|version|magic"):
            load(path, target)
    assert all(torch.equal(v, untouched[k]) for k, v in target.state_dict().items())


def with_checksum(body):
    return body + hashlib.sha256(body).digest()


def test_well_checksummed_but_malformed_or_newer_files_are_rejected(tmp_path):
    path = tmp_path / "m.nncz"
    for header in (b"not zlib", zlib.compress(b"not json"), zlib.compress(b'{"tensors": [{"name": "fc1.weight"}]}')):
        path.write_bytes(with_checksum(MAGIC + bytes([VERSION]) + struct.pack("<I", len(header)) + header))
        with pytest.raises(CorruptFileError, match="malformed"):
            load(path, MLP((8,)))
    path.write_bytes(with_checksum(MAGIC + bytes([VERSION + 1]) + struct.pack("<I", 2) + b"{}"))
    with pytest.raises(CorruptFileError, match="version"):
        load(path, MLP((8,)))
    assert issubclass(CorruptFileError, ValueError)


def test_shared_weights_are_found_in_any_module_by_their_parametrization():
    model = apply_sharing(pruned_mlp(), {"fc2": 2})
    assert list(code_streams(model)) == ["fc2"]
    assert isinstance(parametrizations.find(model, SharedWeight)["fc2.weight"], SharedWeight)


@pytest.mark.parametrize("index_bits", [5, "auto"])
def test_half_stores_every_float_as_float16_and_restores_the_rounded_values(tmp_path, index_bits):
    model = apply_sharing(pruned_mlp(), {"fc1": 4, "fc2": 5})  # fc3 plain: raw weight and bias
    model.fc3.weight.data[:, ::2] = 0  # and a sparse float tensor
    full = save(model, tmp_path / "full", index_bits=index_bits)
    half = save(model, tmp_path / "half", index_bits=index_bits, half=True)
    floats = sum(m.bias.numel() for m in (model.fc1, model.fc2, model.fc3)) + 16 + 32 \
        + int(model.fc3.weight.count_nonzero())  # biases, two codebooks, fc3's non-zeros
    payload = {}
    for name in ("full", "half"):
        data = (tmp_path / name).read_bytes()
        payload[name] = len(data) - 9 - struct.unpack("<I", data[5:9])[0] - 32  # less preamble, header, digest
    assert payload["full"] - payload["half"] == 2 * floats  # two bytes saved per float, nothing else
    assert abs((full - half) - 2 * floats) <= 8  # the compressed header names the type: a few bytes
    restored = load(tmp_path / "half", MLP((32, 16)))
    want = {k: v.to(torch.float16).to(v.dtype) for k, v in plain_state(model).items()}
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in want.items())
    assert not all(torch.equal(restored.state_dict()[k], v) for k, v in plain_state(model).items())
    with pytest.raises(TypeError, match="half must be a bool"):
        save(model, tmp_path / "m", half=1)


def test_float64_tensors_keep_their_type_unless_half(tmp_path):
    model = MLP((8,)).double()
    save(model, tmp_path / "m")
    assert_same_state(load(tmp_path / "m", MLP((8,)).double()), model)
