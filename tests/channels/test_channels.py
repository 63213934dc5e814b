"""Channels: round trips within their stated error, exact byte counts, error feedback, and runs."""

import math
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import local_sim, resumed, tiny_overrides

from raysim.channels import FP16, Dense, Quantize, RandomK, Sign, TopK, keep_count, roundtrip, with_feedback
from raysim.engine.device_state import DeviceStates
from raysim.errors import ScenarioError
from raysim.scenario.schema import load_scenario

SHAPES = [(1,), (7,), (64, 33), (16, 3, 3, 3), (5, 8), (1000,)]
ALL = [Dense(), FP16(), Quantize(8), Quantize(4, "channel"), Quantize(1), Quantize(3, "tensor", "stochastic"),
       TopK(0.01), TopK(0.3), TopK(1.0), RandomK(0.1), RandomK(0.5, error_feedback=True), Sign()]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channel", ALL, ids=lambda c: c.describe())
def test_byte_counts_known_ahead_match_the_encoded_payload_exactly(channel):
    update = {f"t{i}": torch.randn(s, generator=gen(i)) for i, s in enumerate(SHAPES)}
    shapes = {k: tuple(v.shape) for k, v in update.items()}
    payload = channel.encode(update, gen())
    assert payload.nbytes == channel.nbytes(shapes)
    assert payload.nbytes == sum(a.nbytes for parts in payload.arrays.values() for a in parts.values())
    back = channel.decode(payload, shapes)
    assert {k: tuple(v.shape) for k, v in back.items()} == shapes and all(v.dtype == torch.float32 for v in back.values())


def test_dense_and_fp16_round_trip_exactly_and_within_half_precision():
    x = {"w": torch.randn(50, 20, generator=gen())}
    assert torch.equal(roundtrip(Dense(), x, gen())["w"], x["w"])
    err = (roundtrip(FP16(), x, gen())["w"] - x["w"]).abs()
    assert torch.all(err <= x["w"].abs() * 2.0**-11 + 1e-7)
    assert Dense().nbytes({"w": (50, 20)}) == 4000 and FP16().nbytes({"w": (50, 20)}) == 2000


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("scale", ["tensor", "channel"])
def test_quantization_is_within_half_a_step_and_stochastic_rounding_within_one_and_unbiased(bits, scale):
    x = torch.randn(12, 40, generator=gen(bits))
    rows = x.reshape(12 if scale == "channel" else 1, -1)
    step = ((rows.max(1).values - rows.min(1).values) / (2**bits - 1))[:, None]
    near = roundtrip(Quantize(bits, scale), {"x": x}, gen())["x"].reshape(rows.shape)
    assert torch.all((near - rows).abs() <= step / 2 + 1e-5)
    sto = Quantize(bits, scale, "stochastic")
    draws = torch.stack([roundtrip(sto, {"x": x}, gen(s))["x"].reshape(rows.shape) for s in range(400)])
    assert torch.all((draws - rows).abs() <= step + 1e-5)
    assert float((draws.mean(0) - rows).abs().max()) < float(step.max()) * 0.2  # unbiased: the mean closes in


def test_topk_keeps_exactly_k_of_the_largest_and_picks_the_smaller_index_form():
    x = torch.randn(1000, generator=gen())
    for frac in (0.001, 0.01, 0.05, 0.5):
        k = keep_count(1000, frac)
        out = roundtrip(TopK(frac), {"x": x}, gen())["x"]
        kept = out != 0
        assert int(kept.sum()) == k and torch.equal(out[kept], x[kept])
        assert x.abs()[kept].min() >= x.abs()[~kept].max()
    assert "indices" in TopK(0.01).encode({"x": x}, gen()).arrays["x"]     # 10 indices: 40 bytes < 125
    assert "bitmap" in TopK(0.5).encode({"x": x}, gen()).arrays["x"]       # 500 indices: the 125-byte bitmap
    assert keep_count(10, 1e-6) == 1 and keep_count(0, 0.5) == 0


def test_random_k_sends_k_values_and_is_unbiased_without_error_feedback():
    x = torch.randn(200, generator=gen())
    outs = torch.stack([roundtrip(RandomK(0.25), {"x": x}, gen(s))["x"] for s in range(600)])
    assert all(int((o != 0).sum()) == 50 for o in outs[:5])
    assert float((outs.mean(0) - x).abs().mean()) < 0.15 * float(x.abs().mean())
    ef = roundtrip(RandomK(0.25, error_feedback=True), {"x": x}, gen())["x"]
    assert torch.equal(ef[ef != 0], x[ef != 0])  # with error feedback: the values as they are


def test_sign_sends_the_mean_magnitude_times_the_sign():
    x = torch.tensor([0.5, -2.0, 0.0, 1.5])
    assert roundtrip(Sign(), {"x": x}, gen())["x"].tolist() == [1.0, -1.0, 1.0, 1.0]
    assert Sign().nbytes({"x": (4,)}) == 5


@pytest.mark.parametrize("channel", [TopK(0.05, True), RandomK(0.1, True), Sign(True), Quantize(2, error_feedback=True)],
                         ids=lambda c: c.describe())
def test_error_feedback_keeps_exactly_what_the_channel_dropped(channel):
    residual = None
    sent_total = torch.zeros(300)
    true_total = torch.zeros(300)
    for r in range(20):
        u = {"x": torch.randn(300, generator=gen(r))}
        arrived, residual = with_feedback(channel, u, residual, gen(100 + r))
        sent_total += arrived["x"]
        true_total += u["x"]
    # nothing is lost, only delayed: what arrived plus what is still held is what was produced
    assert torch.allclose(sent_total + residual["x"], true_total, atol=1e-4)


def test_device_states_spill_past_their_budget_and_come_back_intact(tmp_path):
    store = DeviceStates(budget_bytes=3000, spill_dir=tmp_path / "spill")
    states = {d: {"rate": 0.5, "keep": {"g": np.arange(d + 1)}, "residual": {"w": np.full(200, float(d), np.float32)}}
              for d in range(6)}
    for d, st in states.items():
        store.put(d, st)
    assert store.ram_bytes <= 3000 and store.spills > 0 and len(store) == 6
    snapshot = store.state_dict()
    for d in range(6):
        got = store.get(d)
        assert got["rate"] == 0.5 and np.array_equal(got["keep"]["g"], np.arange(d + 1))
        assert np.array_equal(got["residual"]["w"], states[d]["residual"]["w"])
    again = DeviceStates()
    again.load_state_dict(snapshot)
    assert np.array_equal(again.get(4)["residual"]["w"], states[4]["residual"]["w"])


def run(sc, rounds, hosts=1):
    sim = local_sim(sc, hosts=hosts)
    return sim, [sim.step() for _ in range(rounds)]


def test_the_bytes_recorded_and_the_upload_time_come_from_the_channel():
    dense = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=1))
    q = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=1, **{"channel.up": "quantize",
                                                                               "channel.up_params": "{bits: 4}"}))
    sd, [od] = run(dense, 1)
    sq, [oq] = run(q, 1)
    cd, cq = od.clients.columns(), oq.clients.columns()
    for rate, cost in sq.setup.costs.items():
        module = sq.spec.build({g: math.ceil(w * rate) for g, w in sq.spec.groups.items()}, rate)
        shapes = {k: tuple(p.shape) for k, p in module.named_parameters()}
        assert cost.wire_up == Quantize(4).nbytes(shapes) and cost.wire_down == sd.setup.costs[rate].param_bytes
    ok = [i for i, s in enumerate(cq["status"]) if s == "ok"]
    assert ok and all(cq["bytes_up"][i] == sq.setup.costs[cq["rate"][i]].wire_up for i in ok)
    assert sum(cq["bytes_up"]) < sum(cd["bytes_up"]) / 6
    # same devices, same jitter: the upload is faster, the download the same
    assert cd["device_id"] == cq["device_id"] and cd["t_download"] == cq["t_download"]
    assert all(u_q < u_d for u_q, u_d, r in zip(cq["t_upload"], cd["t_upload"], cq["rate"]) if not math.isnan(r))


def test_error_feedback_runs_are_bit_identical_across_hosts_and_resume_exactly():
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=4, **{
        "channel.up": "topk", "channel.up_params": "{fraction: 0.05, error_feedback: true}",
        "compression.strategy": "rolling"}))
    a, _ = run(sc, 4, hosts=1)
    b, _ = run(sc, 4, hosts=2)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert len(a.mode.rounds.device_states) > 0
    c, _ = run(sc, 2)
    d = resumed(sc, c.state_dict(), 2)
    assert all(torch.equal(a.params[k], d.params[k]) for k in a.params)
    # without its residuals the resumed run would differ: they matter
    e = resumed(sc, c.state_dict(), 2, drop_device_states=True)
    assert not all(torch.equal(a.params[k], e.params[k]) for k in a.params)


CHANNEL = textwrap.dedent('''
    import numpy as np
    import torch
    from raysim.api import Channel


    class Halves(Channel):
        """Sends every value halved (a toy channel): 4 bytes a value."""

        def encode_tensor(self, x, gen):
            return {"v": (x / 2).numpy().reshape(-1).astype(np.float32)}

        def decode_tensor(self, parts, shape):
            return torch.from_numpy(parts["v"].reshape(shape) * 2)

        def tensor_bytes(self, shape):
            return 4 * int(np.prod(shape))
''')


def test_a_channel_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "mychannel.py").write_text(CHANNEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=1, **{"channel.up": "mychannel:Halves"}))
    dense = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=1))
    a, _ = run(sc, 1)
    b, _ = run(dense, 1)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)  # halved and doubled: exact
    sys.modules.pop("mychannel", None)


@pytest.mark.parametrize("overrides, message", [
    ({"channel.up": "zip"}, "channel.up: unknown name 'zip'"),
    ({"channel.up": "quantize", "channel.up_params": "{bits: 9}"}, "channel.up_params.bits"),
    ({"channel.up": "topk", "channel.up_params": "{fraction: 0}"}, "channel.up_params.fraction"),
    ({"channel.down": "topk", "channel.down_params": "{error_feedback: true}"},
     "channel.down_params.error_feedback: error feedback keeps what a device's update lost"),
    ({"channel.up": "sign", "channel.up_params": "{error_feedback: true}", "server.mode": "fedbuff"},
     "channel.up_params.error_feedback: residuals are kept in synchronous rounds only"),
])
def test_bad_channel_settings_are_one_line(overrides, message):
    from raysim.scenario.resolve import components

    with pytest.raises(ScenarioError) as err:
        components(load_scenario("scenarios/quickstart.yaml", tiny_overrides(**overrides)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_report_shows_accuracy_against_traffic_and_the_dense_bytes_saved(tmp_path):
    from raysim.report.markdown import write_report
    from raysim.report.summaries import class_table, cumulative_mb, dense_mb_up
    from raysim.report.tables import Runs
    from raysim.rundir.reader import load_run
    from raysim.rundir.writer import RunWriter

    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=2, **{"channel.up": "quantize",
                                                                               "channel.up_params": "{bits: 8}"}))
    sim = local_sim(sc)
    w = RunWriter(tmp_path / "q", sc, {"params": {str(r): c.params for r, c in sim.setup.costs.items()}})
    for _ in range(2):
        w.add(sim.step())
    w.finish()
    run = load_run(tmp_path / "q")
    mb = cumulative_mb(run)
    assert len(mb) == 2 and mb[1] > mb[0] > 0
    assert mb[-1] == pytest.approx((run.clients["bytes_down"].sum() + run.clients["bytes_up"].sum()) / 1e6)
    assert "mb_up_dense" in class_table(run)
    up = run.clients.groupby("device_class")["bytes_up"].sum() / 1e6
    dense = dense_mb_up(run)
    # 8-bit codes: about a quarter of the dense float32 bytes (plus 8 bytes of scale per tensor)
    assert len(dense) and np.all(up[dense.index] < 0.3 * dense) and np.all(up[dense.index] > 0.25 * dense)
    rep = write_report(Runs([run]), tmp_path / "rep")
    assert "accuracy_bytes.png" in {p.name for p in rep.figures}
