"""The measurement harness against hand counts, files on disk and torch's own utilities."""

import io
import math
import platform
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress import measure, models, timing


class Mask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight):
        return weight * self.mask


def masked_lenet300(keep=0.1, seed=0):
    model = models.lenet_300_100()
    mask = (torch.rand(300, 784, generator=torch.Generator().manual_seed(seed)) < keep).float()
    parametrize.register_parametrization(model.fc1, "weight", Mask(mask))
    return model, mask


def test_params_and_nonzeros_of_a_dense_model():
    model = models.lenet5()
    assert measure.count_params(model) == sum(p.numel() for p in model.parameters()) == 431_080
    with torch.no_grad():
        model.fc1.weight[:10] = 0.0
    assert measure.count_nonzeros(model) == 431_080 - 10 * 800


def test_parametrized_weight_counts_once_as_the_effective_tensor():
    model, mask = masked_lenet300()
    assert measure.count_params(model) == 266_610  # not doubled by ``original``; the mask is a buffer
    assert measure.count_nonzeros(model) == 266_610 - 300 * 784 + int(mask.sum())
    assert "fc1.weight" in measure.effective_tensors(model)


def test_tied_weights_count_once():
    a = nn.Linear(8, 8)
    model = nn.Sequential(a, nn.ReLU(), a)
    assert measure.count_params(model) == 72


def test_serialized_bytes_equal_the_saved_file(tmp_path):
    model = models.lenet_300_100()
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:  # through a handle, as to memory (a path renames the zip records)
        torch.save(model.state_dict(), f)
    assert measure.serialized_bytes(model) == path.stat().st_size
    assert measure.serialized_bytes(model) > 4 * 266_610  # fp32 payload plus the zip container


def test_flops_match_hand_counts():
    # a multiply-add counts 2; LeNet-5: conv1 20x24x24 outputs of 25 MACs, conv2 50x8x8 of 500, fc 800x500 and 500x10
    assert measure.count_flops(models.lenet5()) == 2 * (20 * 24 * 24 * 25 + 50 * 8 * 8 * 500 + 800 * 500 + 500 * 10)
    assert measure.count_flops(models.lenet_300_100()) == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert measure.count_flops(nn.Linear(7, 3), input_shape=(7,)) == 42


def test_layer_breakdown_adds_up_to_the_totals():
    for model in (models.lenet5(), masked_lenet300()[0]):
        rows = measure.layer_breakdown(model)
        assert sum(r["params"] for r in rows) == measure.count_params(model)
        assert sum(r["flops"] for r in rows) == measure.count_flops(model)
    rows = {r["layer"]: r for r in measure.layer_breakdown(models.lenet5())}
    assert list(rows) == ["conv1", "conv2", "fc1", "fc2"]
    assert rows["fc1"]["bytes"] == 4 * (800 * 500 + 500)


def test_latency_is_measured_with_fixed_threads_and_restores_the_setting():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seconds = measure.measure_latency(Spy(), batch_size=4, threads=1, min_run_time=0.01, warmup=2)
        assert torch.get_num_threads() == 2  # restored, although the model ran on one thread
    finally:
        torch.set_num_threads(before)
    assert seconds > 0 and seen and set(seen) == {1}


def test_profile_collects_everything():
    model = models.lenet_300_100()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 1, 28, 28, generator=g), torch.randint(0, 10, (50,), generator=g)
    p = measure.profile(model, "mlp", data=(x, y), batch_sizes=(1, 8), min_run_time=0.05)
    assert p.accuracy == pytest.approx((model(x).argmax(1) == y).float().mean().item())
    assert p.error == pytest.approx(1 - p.accuracy)
    assert (p.params, p.nonzeros, p.flops) == (266_610, 266_610, 2 * (784 * 300 + 300 * 100 + 100 * 10))
    assert set(p.latency) == {1, 8} and p.bytes_source == "state_dict"
    row = p.as_dict()
    assert row["latency_b8_s"] == p.latency[8] and "latency" not in row


def test_profile_counts_a_custom_encoding():
    model = models.lenet_300_100()
    assert measure.profile(model, nbytes=1234, batch_sizes=()).bytes == 1234
    p = measure.profile(model, nbytes=lambda m: 2 * measure.count_params(m), batch_sizes=())
    assert p.bytes == 2 * 266_610 and p.bytes_source == "custom" and p.latency == {}


@pytest.mark.parametrize("bad", [None, "model", torch.zeros(3), lambda x: x])
def test_harness_rejects_non_modules(bad):
    for fn in (measure.profile, measure.count_params, measure.serialized_bytes, measure.count_flops,
               measure.measure_latency, measure.layer_breakdown):
        with pytest.raises(TypeError, match="torch.nn.Module"):
            fn(bad)


def test_latency_runs_on_given_inputs():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x

    inputs = torch.arange(5 * 784, dtype=torch.float32).reshape(5, 1, 28, 28)
    measure.measure_latency(Spy(), batch_size=3, inputs=inputs, min_run_time=0.01, warmup=1)
    assert seen and all(torch.equal(x, inputs[:3]) for x in seen)


def test_latency_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least batch_size=8 rows"):
        measure.measure_latency(models.lenet_300_100(), batch_size=8, inputs=torch.zeros(4, 1, 28, 28))
    for kwargs, match in (({"batch_size": 0}, "batch_size"), ({"threads": -1}, "threads"), ({"repeats": 0}, "repeats")):
        with pytest.raises(ValueError, match=match):
            measure.measure_latency(models.lenet_300_100(), **kwargs)


@pytest.mark.parametrize("kwargs, match", [({"threads": 0}, "threads"), ({"batch_sizes": (1, 0)}, "batch_sizes"),
                                           ({"nbytes": -1}, "nbytes"), ({"nbytes": 1.5}, "nbytes")])
def test_profile_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure.profile(models.lenet_300_100(), **kwargs)


def test_comparison_table_ratios_and_rendering():
    a = measure.Profile("dense", 0.98, 100, 100, 4000, 10, {1: 2e-3, 256: 0.5})
    b = measure.Profile("small", 0.97, 50, 25, 1000, 5, {1: 1e-3, 256: 0.25})
    table = measure.comparison_table([a, b])
    rec = table.records()[1]
    assert rec["size ×"] == 4.0 and rec["speed-up @ b=1"] == 2.0 and rec["speed-up @ b=256"] == 2.0
    assert rec["error %"] == pytest.approx(3.0) and rec["kB"] == 1.0 and rec["ms @ b=256"] == 250.0
    html = table._repr_html_()
    assert html.count("<tr>") == 3 and "small" in html
    assert table._repr_markdown_().splitlines()[0].startswith("| model | error % |")
    buffer = io.StringIO()
    table.to_csv(buffer)
    assert buffer.getvalue().splitlines()[2].startswith("small,")
    assert "–" in str(measure.comparison_table([measure.Profile("x", None, 1, 1, 1, 1)], reference=None))


def test_comparison_table_rejects_bad_input():
    with pytest.raises(TypeError, match="Profile"):
        measure.comparison_table([])
    p = measure.Profile("x", None, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="reference"):
        measure.comparison_table([p], reference=3)
    with pytest.raises(ValueError, match="one value per column"):
        measure.Table(["a", "b"], [[1]])


def test_environment_reports_provenance():
    env = measure.environment()
    assert env["torch"] == str(torch.__version__) and env["threads"] >= 1 and env["cpu"]
    assert env["python"] == platform.python_version()
    assert env["int8_engine"] == torch.backends.quantized.engine and isinstance(env["vnni"], bool)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # the flag is read from the "flags" line, not guessed from the model name
        flags = re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M)
        words = flags.group(1).split() if flags else []
        assert env["vnni"] == ("avx512_vnni" in words or "avx_vnni" in words)


def test_table_from_records():
    table = measure.Table.from_records([{"a": 1, "b": 2.5}, {"a": 3, "b": 4.0}], caption="c")
    assert table.columns == ["a", "b"] and table.rows == [[1, 2.5], [3, 4.0]] and table.caption == "c"
    assert table.records() == [{"a": 1, "b": 2.5}, {"a": 3, "b": 4.0}]
    with pytest.raises(ValueError, match="records"):
        measure.Table.from_records([])


def test_write_results_round_trips_with_provenance(tmp_path):
    import json

    p = measure.profile(models.lenet_300_100(), "mlp", batch_sizes=(1,), min_run_time=0.02)
    written = measure.write_results([p], tmp_path / "r.json", dataset="MNIST")
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert loaded == json.loads(json.dumps(written))
    assert loaded["dataset"] == "MNIST" and loaded["results"][0]["name"] == "mlp"
    assert set(loaded["environment"]) >= {"cpu", "threads", "torch", "python"}
    with pytest.raises(TypeError, match="Profile"):
        measure.write_results([], tmp_path / "empty.json")


def test_pareto_front_keeps_exactly_the_non_dominated():
    def prof(name, error, nbytes, ms):
        return measure.Profile(name, 1 - error, 10, 10, nbytes, 100, {1: ms})

    ps = [prof("big", 0.01, 1000, 1.0), prof("small", 0.02, 100, 2.0), prof("worse", 0.03, 500, 0.5),
          prof("tie", 0.02, 100, 3.0), prof("dominated", 0.02, 200, 5.0)]
    assert [p.name for p in measure.pareto_front(ps, "bytes")] == ["small", "tie", "big"]
    assert [p.name for p in measure.pareto_front(ps, "latency_b1")] == ["worse", "big"]
    with pytest.raises(ValueError, match="axis"):
        measure.pareto_front(ps, "latency_b256")
    with pytest.raises(ValueError, match="axis"):
        measure.pareto_front(ps, "speed")
    with pytest.raises(TypeError, match="accuracy"):
        measure.pareto_front([measure.Profile("x", None, 1, 1, 1, 1)])


def test_pareto_front_of_scores_keeps_the_highest_scores():
    def prof(name, score, nbytes):
        return measure.Profile(name, None, 10, 10, nbytes, 100, metric="spearman", score=score)

    ps = [prof("float", 82.0, 90), prof("int8", 81.7, 23), prof("worse", 80.0, 50), prof("tiny", 70.0, 5)]
    assert [p.name for p in measure.pareto_front(ps, "bytes")] == ["tiny", "int8", "float"]
    assert ps[0].shortfall == -82.0 and measure.Profile("a", 0.9, 1, 1, 1, 1).shortfall == pytest.approx(0.1)
    with pytest.raises(TypeError, match="each with a score"):  # accuracies and scores do not mix
        measure.pareto_front([ps[0], measure.Profile("a", 0.9, 1, 1, 1, 1)])


class Tagged(nn.Module):
    """An identity that writes its name into a shared log on every call."""

    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.log.append(self.name)
        return self.fc(x)


def test_measure_latencies_times_the_models_in_turns():
    log = []
    seconds = measure.measure_latencies({"a": Tagged("a", log), "b": Tagged("b", log)}, 1, (4,), min_run_time=0.01,
                                        rounds=3)
    assert set(seconds) == {"a", "b"} and all(t > 0 for t in seconds.values())
    runs = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]  # the order of the stretches
    assert runs == ["a", "b"] * 4  # warm-up, then a, b; a, b; a, b: every round visits every model


class Clocked(nn.Module):
    """A model whose every call advances a fake clock by the next of its scripted durations."""

    def __init__(self, name, now, durations, log):
        super().__init__()
        self.name, self.now, self.durations, self.log = name, now, list(durations), log
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.log.append(self.name)
        self.now[0] += self.durations.pop(0)
        return self.fc(x)


def test_measure_latencies_keeps_each_models_median_round(monkeypatch):
    # a's rounds are 1.0 (lucky), then about 2; b's about 2 throughout: the fastest rounds would
    # make a twice as fast, the medians (2.0 and 2.05) say that the two are alike. Three warm-up
    # calls each come first; the last (1.0) says one call fills a round of 0.2 s.
    now, log = [0.0], []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    a = Clocked("a", now, [5.0, 5.0, 1.0, 1.0, 2.1, 2.0, 1.9, 2.2], log)
    b = Clocked("b", now, [5.0, 5.0, 1.0, 2.0, 2.05, 2.2, 1.95, 2.1], log)
    seconds = measure.measure_latencies({"a": a, "b": b}, 1, (4,), min_run_time=1.0, rounds=5)
    assert seconds == pytest.approx({"a": 2.0, "b": 2.05})
    assert log == ["a"] * 3 + ["b"] * 3 + ["a", "b"] * 5  # warm-up, then every round times every model, in turns


def test_measure_latencies_times_enough_calls_per_round(monkeypatch):
    # a warm-up call of 0.01 s and 0.9 s over 9 rounds: ten calls a round, and seconds per call
    now, log = [0.0], []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    model = Clocked("a", now, [0.5, 0.5, 0.01] + [0.01] * 50 + [0.03] * 40, log)
    seconds = measure.measure_latencies({"a": model}, 1, (4,), min_run_time=0.9)
    assert len(log) == 3 + 9 * 10
    assert seconds["a"] == pytest.approx(0.01)  # the median round (five at 0.1 s, four at 0.3 s), per call


def test_calls_in_turns_keeps_each_calls_median_round(monkeypatch):
    now, order, b_steps = [0.0], [], iter([2.0, 9.0, 4.0])  # a fake clock, advanced only by the calls

    def call(name, step):
        def run():
            order.append(name)
            now[0] += step()
        return run

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    seconds = measure.calls_in_turns({"a": call("a", lambda: 1.0), "b": call("b", lambda: next(b_steps))},
                                     rounds=3, warmup=False)
    assert order == ["a", "b"] * 3 and seconds == {"a": 1.0, "b": 4.0}  # b's rounds: 2, 9, 4


def test_speedups_in_turns_are_medians_of_each_rounds_ratios(monkeypatch):
    # the machine is twice as slow in round 2; b is always twice as fast as a within a round
    now, steps = [0.0], iter([2.0, 1.0, 4.0, 2.0, 2.0, 1.0, 3.0, 1.0])

    def run():
        now[0] += next(steps)

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    speed = measure.speedups_in_turns({"a": run, "b": run}, "a", rounds=4, warmup=False)
    assert speed == {"a": 1.0, "b": 2.0}  # rounds' ratios 2, 2, 2, 3; the ratio of the medians would be 2.5
    with pytest.raises(ValueError, match="baseline"):
        measure.speedups_in_turns({"a": run}, "b")
    with pytest.raises(TypeError, match="calls"):
        measure.speedups_in_turns({"a": 1}, "a")
    with pytest.raises(ValueError, match="rounds"):
        measure.speedups_in_turns({"a": run}, "a", rounds=0)


def test_profile_many_matches_profile_except_for_the_timing_schedule():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    nets = {"mlp": models.lenet_300_100(), "cnn": models.lenet5()}
    many = measure.profile_many(nets, (x, y), batch_sizes=(1, 8), nbytes={"cnn": 1234}, min_run_time=0.02, rounds=2)
    for p, (name, net) in zip(many, nets.items()):
        one = measure.profile(net, name, (x, y), batch_sizes=(), nbytes=1234 if name == "cnn" else None)
        assert {k: v for k, v in vars(p).items() if k != "latency"} == {k: v for k, v in vars(one).items() if k != "latency"}
        assert set(p.latency) == {1, 8} and all(t > 0 for t in p.latency.values())
    assert many[1].bytes == 1234 and many[1].bytes_source == "custom"


def test_measure_latencies_and_profile_many_reject_bad_arguments():
    net = models.lenet_300_100()
    with pytest.raises(TypeError, match="mapping"):
        measure.measure_latencies([net])
    with pytest.raises(ValueError, match="at least one"):
        measure.measure_latencies({})
    with pytest.raises(ValueError, match="rounds"):
        measure.measure_latencies({"a": net}, rounds=0)
    with pytest.raises(TypeError, match=r"models\['a'\]"):
        measure.measure_latencies({"a": "net"})
    with pytest.raises(ValueError, match="not in models"):
        measure.profile_many({"a": net}, nbytes={"b": 10})
    with pytest.raises(TypeError, match="mapping"):
        measure.profile_many(net)
    with pytest.raises(ValueError, match="batch_sizes"):
        measure.profile_many({"a": net}, batch_sizes=(0,))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"threads": 1}, ValueError, "threads"), ({"threads": 2.0}, TypeError, "threads"),
    ({"threads": True}, TypeError, "threads"), ({"size": 8}, ValueError, "size"),
    ({"rounds": 0}, ValueError, "rounds"), ({"min_run_time": 0}, ValueError, "min_run_time"),
    ({"min_run_time": float("nan")}, ValueError, "min_run_time")])
def test_thread_scaling_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        measure.thread_scaling(**kwargs)


def test_thread_scaling_restores_the_thread_count():
    before = torch.get_num_threads()
    scaling = measure.thread_scaling(rounds=1, min_run_time=0.02, size=64)
    assert math.isfinite(scaling) and scaling > 0  # no bound on its value: that depends on the machine
    assert torch.get_num_threads() == before


def test_per_input_latencies_feeds_every_input_once_per_round_in_turns():
    log, seen = [], []

    class Spy(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            log.append(self.name)
            seen.append((self.name, x.clone()))
            return x

    inputs = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    seconds = measure.per_input_latencies({"a": Spy("a"), "b": Spy("b")}, inputs, rounds=2)
    assert set(seconds) == {"a", "b"} and all(t > 0 for t in seconds.values())
    runs = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]
    assert runs == ["a", "b"] * 3 and len(log) == 2 * (10 + 4) + 2 * 4  # ten warm-up calls each, then two rounds
    timed = [x for name, x in seen if name == "a"][10:14]
    assert all(torch.equal(x, inputs[i:i + 1]) for i, x in enumerate(timed))
    with pytest.raises(ValueError, match="inputs"):
        measure.per_input_latencies({"a": Spy("a")}, torch.zeros(0, 3))
    with pytest.raises(ValueError, match="rounds"):
        measure.per_input_latencies({"a": Spy("a")}, inputs, rounds=0)
    with pytest.raises(TypeError, match="mapping"):
        measure.per_input_latencies([Spy("a")], inputs)


def test_fused_cpu_attention_counts_as_its_two_matrix_products():
    class Fused(nn.Module):
        def forward(self, q):
            mask = torch.ones(1, 1, q.shape[-2], q.shape[-2], dtype=torch.bool)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    class Explicit(nn.Module):
        def forward(self, q):
            return (q @ q.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1) @ q

    assert measure.count_flops(Fused(), (4, 10, 8)) == measure.count_flops(Explicit(), (4, 10, 8)) == 2 * 2 * 4 * 10 * 10 * 8


def test_group_breakdown_and_module_times_split_a_model_by_groups():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.Linear(8, 4))
    rows = measure.group_breakdown(model, {"first": ["0"], "middle": ["2"]}, input_shape=(16,))
    assert [r["group"] for r in rows] == ["first", "middle", "rest"]
    assert [r["params"] for r in rows] == [16 * 32 + 32, 32 * 8 + 8, 8 * 4 + 4]
    assert [r["flops"] for r in rows] == [2 * 16 * 32, 2 * 32 * 8, 2 * 8 * 4]
    assert rows[0]["bytes"] == 4 * rows[0]["params"]
    with pytest.raises(ValueError, match="overlap"):
        measure.group_breakdown(model, {"a": ["0"], "b": ["0"]}, input_shape=(16,))
    times = measure.module_times(model, torch.randn(64, 16), {"first": ["0"], "rest": ["2", "3"]}, repeats=3)
    assert set(times) == {"first", "rest", "total"}
    assert 0 < times["first"] < times["total"] and 0 < times["rest"] < times["total"]
    assert times["first"] + times["rest"] <= times["total"]


def test_calls_in_turns_keeps_each_calls_fastest_round():
    import time as _time

    from nncompress.measure import calls_in_turns

    order = []
    seconds = calls_in_turns({"short": lambda: order.append("s"),
                              "long": lambda: (order.append("l"), _time.sleep(0.01))}, rounds=2)
    assert order == ["s", "l"] * 3  # a warm-up call each, then two rounds in turns
    assert seconds["long"] >= 0.01 > seconds["short"]
    with pytest.raises(TypeError, match="callables"):
        calls_in_turns({"x": 3})
    with pytest.raises(ValueError, match="rounds"):
        calls_in_turns({"x": lambda: None}, rounds=0)
