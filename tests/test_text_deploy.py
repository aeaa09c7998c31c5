"""int8 and smoothing on transformers, and the encoder deployed with ONNX Runtime."""

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress import quantization as Q
from nncompress import text
from test_text import random_ids, tiny_encoder


def test_smoothing_is_exact_in_float_and_balances_the_maxima():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    x = torch.randn(200, 8) * torch.tensor([1.0, 30.0, 1, 1, 1, 1, 1, 1])  # one outlier feature
    stats = nc.calibration.input_statistics(model, [x])
    smoothed = Q.apply_smoothing(model, stats, alpha=0.5)
    assert isinstance(smoothed[0], Q.SmoothedLinear) and isinstance(model[0], nn.Linear)  # input untouched
    assert torch.allclose(smoothed(x), model(x), atol=1e-5)
    scaled_input = (x * smoothed[0].inverse).abs().amax(0)
    scaled_weight = smoothed[0].linear.weight.abs().amax(0)
    assert torch.allclose(scaled_input, scaled_weight, rtol=1e-4)  # alpha = 0.5: equal maxima
    assert torch.allclose(scaled_input, (stats["0"].absmax * model[0].weight.abs().amax(0)).sqrt(), rtol=1e-4)
    s = Q.smoothing_scales(torch.tensor([4.0, 0.0]), torch.tensor([1.0, 2.0]), alpha=1.0)
    assert s.tolist() == [4.0, 1.0]  # a feature that is never active keeps scale 1
    with pytest.raises(ValueError, match="alpha"):
        Q.smoothing_scales(torch.ones(2), torch.ones(2), alpha=1.5)
    with pytest.raises(ValueError, match="no entry"):
        Q.apply_smoothing(model, {}, layers=["0"])


def test_calibration_on_batches_in_one_pass_matches_the_observed_ranges():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = [torch.randn(7, 6), torch.randn(4, 6) * 3]
    fq = Q.post_training_quantize(model, batches, 8, 8, sequential=False)
    quant = Q.activation_quantizers(fq)
    first = next(q for name, q in quant.items() if name.startswith("0"))
    lo, hi = torch.cat(batches).amin(), torch.cat(batches).amax()
    expected = Q.qparams(lo, hi, 8)[0]
    assert torch.allclose(first.scale, expected)
    with pytest.raises(ValueError, match="at least one batch"):
        Q.calibrate(Q.apply_fake_quant(model), [])


def test_dynamic_int8_quantizes_only_the_selected_layers():
    encoder = tiny_encoder()
    linears = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    int8 = Q.dynamic_int8(encoder, linears[:2])
    kinds = {n: type(m).__module__ for n, m in int8.named_modules() if n in linears}
    assert all("dynamic" in kinds[n] for n in linears[:2]) and all("dynamic" not in kinds[n] for n in linears[2:])
    ids = random_ids(6, 10)
    assert torch.allclose(int8(ids), encoder(ids), atol=0.05)
    assert nc.measure.count_flops(int8, inputs=ids[:1]) == nc.measure.count_flops(encoder, inputs=ids[:1])


def test_length_batches_cover_every_sentence_once_without_padding():
    ids = random_ids(50, 12, seed=3)
    batches = text.length_batches(ids, batch_size=4)
    assert sum(len(b) for b in batches) == 50 and all((b != 0).all() for b in batches)
    assert max(len(b) for b in batches) <= 4
    rows = sorted(tuple(r.tolist()) for b in batches for r in b)
    assert rows == sorted(tuple(r[r != 0].tolist()) for r in ids)


def test_onnx_runtime_encoder_matches_torch_and_its_int8_stays_close(tmp_path):
    encoder = tiny_encoder()
    path = text.export_onnx(encoder, tmp_path / "tiny.onnx")
    ids = random_ids(9, 14, seed=5)
    runtime = text.OnnxEncoder(path)
    assert torch.allclose(runtime(ids), encoder(ids), atol=1e-5)
    assert torch.allclose(runtime(ids[2:3]), encoder(ids[2:3]), atol=1e-5)  # one sentence, its padding cut
    layer = "transformer.encoder.layer.0.output.dense"
    int8 = text.OnnxEncoder(text.quantize_onnx(path, tmp_path / "tiny-int8.onnx", keep_float=[layer]))
    assert int8.file_bytes() < runtime.file_bytes()
    assert torch.allclose(int8(ids), encoder(ids), atol=0.1)
    with pytest.raises(ValueError, match="keep_float"):
        text.quantize_onnx(path, tmp_path / "x.onnx", keep_float=["no.such.layer"])
    with pytest.raises(TypeError, match="SentenceEncoder"):
        text.export_onnx(nn.Linear(2, 2), tmp_path / "y.onnx")
    with pytest.raises(FileNotFoundError):
        text.OnnxEncoder(tmp_path / "missing.onnx")
    # its threads do not spin after a run, which would slow whatever is timed next
    options = runtime.session(1).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_profile_counts_an_engine_encoder_as_its_torch_twin(tmp_path):
    encoder = tiny_encoder()
    runtime = text.OnnxEncoder(text.export_onnx(encoder, tmp_path / "tiny.onnx"))
    ids = random_ids(40, 12, seed=6)
    pairs = text.TokenizedPairs(ids, torch.arange(20), torch.arange(20, 40), torch.linspace(0, 5, 20, dtype=torch.float64))
    torch_profile, engine = text.profile_encoders({"torch": encoder, "engine": runtime}, pairs, batch_sizes=(1, 8),
                                                  single=8, min_run_time=0.05, counted_as={"engine": encoder},
                                                  nbytes={"engine": runtime.file_bytes()})
    assert engine.params == torch_profile.params and engine.flops == torch_profile.flops
    assert engine.bytes == runtime.file_bytes() and engine.score == pytest.approx(torch_profile.score, abs=1e-3)
