"""Batched training of devices that share a submodel shape, and the GPU device path.

Batched results equal the per-device loop within float tolerance, and are bit-identical
whichever devices share a chunk and on any number of hosts. What needs a CUDA GPU says so
and is skipped without one.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from helpers import local_sim, tiny_overrides
from torch import nn
from torch.nn import functional as F

from raysim.client.algorithms import FedProx, LocalData, LocalSGD
from raysim.client.batch_choice import prefer_batched
from raysim.client.batched import GPU_SLOTS, SLOTS, DeviceWork, batchable, chunks, live_parameters, slots_for, train_group
from raysim.client.batched_forward import compile_grouped
from raysim.client.trainer import Trainer
from raysim.hosts.host import HostCore
from raysim.messages import TrainTask
from raysim.models.cnn import cnn_spec
from raysim.models.mlp import mlp_spec
from raysim.records import OOM
from raysim.scenario.schema import load_scenario
from raysim.seeding import torch_generator
from raysim.submodel.plan import SubmodelPlan, rate_sizes
from raysim.submodel.strategies import Static

NEEDS_GPU = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def CUDA(test):
    """A test that needs a CUDA GPU: marked `cuda` (`pytest -m cuda` runs them all), skipped without one."""
    for mark in NEEDS_GPU:
        test = mark(test)
    return test


SIZES = [35, 20, 7, 41, 1, 13]      # unequal shards: short last minibatches, 1 to 3 per epoch
SPEC = cnn_spec((1, 8, 8), 4, [4, 8], 8)
MLP_SPEC = mlp_spec((1, 8, 8), 4, [16, 8])


def _data(n: int = 200):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def _module(rate: float = 0.5):
    torch.manual_seed(0)
    return SPEC.build({k: rate_sizes(w, rate) for k, w in SPEC.groups.items()}, rate)


def _works(devs, max_steps=None):
    offs = np.concatenate([[0], np.cumsum(SIZES)])
    return [DeviceWork(torch.arange(offs[d], offs[d + 1]), torch_generator(0, "train", 1, d),
                       None if max_steps is None else max_steps[d]) for d in devs]


def _loop(module, client, start, x, y, work, epochs):
    with torch.no_grad():
        for k, p in module.named_parameters():
            p.copy_(start[k])
    ix = work.indices
    return client.train(module, LocalData(x[ix], y[ix], epochs, 20, work.max_steps, work.generator), start)


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "vmap"])
@pytest.mark.parametrize("client", [LocalSGD(lr=0.1, momentum=0.9, weight_decay=1e-3), FedProx(lr=0.1, mu=0.1)],
                         ids=["sgd-momentum-decay", "fedprox"])
def test_batched_equals_the_loop_per_device(client, grouped):
    x, y = _data()
    m = _module()
    start = {k: p.detach().clone() for k, p in m.named_parameters()}
    caps = [None, 1, None, 3, None, 2]   # partial work: a step cap per device
    got = train_group(m, client, start, x, y, _works(range(6), caps), 2, 20, grouped=grouped)
    for d, (b, w) in enumerate(zip(got, _works(range(6), caps))):
        r = _loop(m, client, start, x, y, w, 2)
        assert (b.steps, b.samples) == (r.steps, r.samples), d
        assert b.finite and abs(b.loss - r.loss) < 1e-5
        for k in r.delta:
            torch.testing.assert_close(b.delta[k], r.delta[k], rtol=1e-4, atol=1e-6)


DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_GPU)]


def _on(device, m, start, x, y):
    """The module, start weights and data on `device` (the GPU runs the same checks)."""
    d = torch.device(device)
    return m.to(d), {k: v.to(d) for k, v in start.items()}, x.to(d), y.to(d)


@pytest.mark.parametrize("device", DEVICES)
def test_a_device_result_does_not_depend_on_its_company(device):
    x, y = _data()
    m = _module()
    start = {k: p.detach().clone() for k, p in m.named_parameters()}
    m, start, x, y = _on(device, m, start, x, y)
    client = LocalSGD(lr=0.1, momentum=0.5)
    slots = slots_for(x.device)   # the last crowd puts device 3 first in a second chunk
    alone = train_group(m, client, start, x, y, _works([3]), 2, 20)[0]               # beside an empty slot
    crowds = [train_group(m, client, start, x, y, _works([5, 0, 4, 3, 1]), 2, 20)[3],  # another slot
              train_group(m, client, start, x, y, _works([3, 2, 1]), 2, 20, pad=True)[0],  # 16 slots
              train_group(m, client, start, x, y, _works(([0, 1, 2, 4, 5] * 13)[:slots] + [3]), 2, 20)[slots]]
    if device == "cpu":   # on a GPU every chunk has GPU_SLOTS slots (kernels are picked by shape)
        crowds.append(train_group(m, client, start, x, y, _works([0, 1, 3]), 2, 20, slots=2)[2])
    for crowd in crowds:
        assert alone.loss == crowd.loss
        assert all(torch.equal(alone.delta[k], crowd.delta[k]) for k in alone.delta)


def test_the_grouped_mlp_and_a_vmap_fallback_equal_the_loop():
    x, y = _data()
    mlp = MLP_SPEC.build({k: rate_sizes(w, 0.5) for k, w in MLP_SPEC.groups.items()}, 0.5)
    # LayerNorm has no grouped form: that model trains under vmap, as before
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))
    assert compile_grouped(mlp, 4)[0] is not None
    assert "LayerNorm" in compile_grouped(other, 4)[1]
    client = LocalSGD(lr=0.1, momentum=0.9)
    for m in (mlp, other):
        start = {k: p.detach().clone() for k, p in m.named_parameters()}
        got = train_group(m, client, start, x, y, _works(range(6), [None, 1, None, 3, None, 2]), 2, 20)
        for b, w in zip(got, _works(range(6), [None, 1, None, 3, None, 2])):
            r = _loop(m, client, start, x, y, w, 2)
            assert b.steps == r.steps and abs(b.loss - r.loss) < 1e-5
            for k in r.delta:
                torch.testing.assert_close(b.delta[k], r.delta[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("in_ch", [1, 3, 8])
def test_a_grouped_result_is_the_same_in_a_chunk_of_any_width(in_ch):
    # oneDNN's kernel for convolutions with few input channels per group changes with the
    # number of groups (from 3-8 on): such a first layer must not take it.
    spec = cnn_spec((in_ch, 8, 8), 4, [16, 8], 8)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(200, in_ch, 8, 8, generator=g), torch.randint(0, 4, (200,), generator=g)
    torch.manual_seed(0)
    m = spec.build()
    start = {k: p.detach().clone() for k, p in m.named_parameters()}
    client = LocalSGD(lr=0.1, momentum=0.5)
    alone = train_group(m, client, start, x, y, _works([3]), 1, 20)[0]
    for width in (3, 5, 8, 9, 12, 17, GPU_SLOTS):   # GPU_SLOTS: the GPU chunk shape, run on the CPU
        r = train_group(m, client, start, x, y, _works([i % 6 for i in range(width - 1)] + [3]), 1, 20,
                        slots=width)[-1]
        assert all(torch.equal(alone.delta[k], r.delta[k]) for k in alone.delta), width


def test_chunks_group_devices_by_their_steps():
    assert chunks([2, 10, 9, 1, 2], 16) == [[1, 2], [0, 4], [3]]
    assert chunks([2, 10, 9, 1, 2], 2, split=False) == [[1, 2], [0, 4], [3]]
    assert chunks([3] * 5, 2) == [[0, 1], [2, 3], [4]]


def test_auto_prefers_batched_only_when_clearly_faster():
    assert prefer_batched(1.0, 0.5) and prefer_batched(1.15, 1.0)
    assert not prefer_batched(1.1, 1.0) and not prefer_batched(1.0, float("inf"))


def test_a_non_finite_device_stays_in_its_slot():
    x, y = _data()
    x[0] = float("nan")                   # device 0's first sample
    m = _module()
    start = {k: p.detach().clone() for k, p in m.named_parameters()}
    res = train_group(m, LocalSGD(), start, x, y, _works([0, 1]), 1, 20)
    assert not res[0].finite and res[1].finite


def test_what_cannot_batch_says_why():
    class Custom(LocalSGD):
        def objective(self, model, x, y, start):
            return super().objective(model, x, y, start) * 2

    m = _module()
    assert batchable(LocalSGD(), m) is None and batchable(FedProx(), m) is None
    assert "Custom" in batchable(Custom(), m)
    assert "batch-statistics" in batchable(LocalSGD(), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64, track_running_stats=False)))
    assert "random" in batchable(LocalSGD(), nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 4)))
    assert "buffers" in batchable(LocalSGD(), nn.BatchNorm1d(4))


def test_unused_parameters_are_left_alone():
    class Spare(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 4)
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x.flatten(1))

    x, y = _data()
    m = Spare()
    live = live_parameters(m, (1, 8, 8), torch.device("cpu"))
    assert live == ["fc.weight", "fc.bias"]
    start = {k: p.detach().clone() for k, p in m.named_parameters()}
    res = train_group(m, LocalSGD(weight_decay=0.1), start, x, y, _works([0]), 1, 20, live=live)[0]
    assert not res.delta["unused.weight"].any()   # the loop applies no weight decay without a gradient


def _hash(sim) -> str:
    return hashlib.sha256(b"".join(v.numpy().tobytes() for v in sim.params.values())).hexdigest()


@pytest.mark.parametrize("device", DEVICES)
def test_batched_runs_are_identical_on_any_number_of_hosts_and_close_to_the_loop(device):
    over = tiny_overrides(rounds=2, **{"selection.per_round": SLOTS + 4, "deadline.policy": "partial",
                                       "runtime.device": device})
    runs = {}
    for mode, hosts in (("on", 1), ("on", 3), ("off", 1)):
        sim = local_sim(load_scenario("scenarios/quickstart.yaml", over + [f"train.batched={mode}"]), hosts=hosts)
        outs = [sim.step() for _ in range(2)]
        runs[mode, hosts] = (_hash(sim), sim.params, outs)
    assert runs["on", 1][0] == runs["on", 3][0]
    for k, v in runs["off", 1][1].items():
        torch.testing.assert_close(runs["on", 1][1][k], v, rtol=1e-3, atol=1e-5)
    a, b = runs["on", 1][2][-1].clients, runs["off", 1][2][-1].clients
    assert list(a.status) == list(b.status) and list(a.steps) == list(b.steps)
    assert np.allclose(np.array(a.loss, float), np.array(b.loss, float), rtol=1e-4, equal_nan=True)


def test_the_gpu_chunking_keeps_runs_identical_on_any_number_of_hosts(monkeypatch):
    # A GPU's chunking (64 padded slots, chunks not split by step count), run on the CPU:
    # what it changes is which devices share a chunk and how many empty slots they sit beside.
    from raysim.client import batched

    gpu = batched.chunking(torch.device("cuda"))
    assert gpu == batched.Chunking(batched.GPU_SLOTS, True)
    monkeypatch.setattr(batched, "chunking", lambda device: gpu)
    widths = set()
    real = batched._train_chunk

    def recorded(*a):
        widths.add(a[-2])   # the chunk's slot count
        return real(*a)

    monkeypatch.setattr(batched, "_train_chunk", recorded)
    over = tiny_overrides(rounds=2, **{"selection.per_round": 20, "deadline.policy": "partial"})
    sims = [local_sim(load_scenario("scenarios/quickstart.yaml", over + ["train.batched=on"]), hosts=h)
            for h in (1, 3)]
    for sim in sims:
        sim.step(), sim.step()
    assert _hash(sims[0]) == _hash(sims[1]) and widths == {batched.GPU_SLOTS}


def test_auto_measures_once_and_every_host_adopts_it():
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=1, **{"train.batched": "auto"}))
    sim = local_sim(sc, hosts=2)
    choices = sim.mode.backend.choices
    assert set(choices) == set(sim.setup.rates)
    assert all(c.choices == choices for c in sim.mode.backend.cores)


def test_yaml_on_and_off_are_words():
    sc = load_scenario("scenarios/quickstart.yaml", ["train.batched=on"])
    assert sc.train.batched == "on"
    assert load_scenario("scenarios/quickstart.yaml", ["train.batched=off"]).train.batched == "off"


def _host(batched: str = "off") -> HostCore:
    x, y = _data()
    offs = np.concatenate([[0], np.cumsum(SIZES)])
    trainer = Trainer(LocalSGD(), 1, 20, 0, batched=batched)
    return HostCore(SPEC, trainer, x.numpy(), y.numpy(), np.arange(offs[-1]), offs)


def _plan(rate: float = 0.5) -> SubmodelPlan:
    return Static().plan(SPEC, rate, 1, -1, None, 0)


@pytest.mark.parametrize("batched", ["off", "on"])
def test_cuda_out_of_memory_is_recorded_oom_not_a_crash(batched, monkeypatch):
    host = _host(batched)
    real = Trainer.train

    def tight(self, model, start, x, y, round_idx, device_id, max_steps, *state):
        if device_id == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, model, start, x, y, round_idx, device_id, max_steps, *state)

    def no_room(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Trainer, "train", tight)
    monkeypatch.setattr("raysim.client.batched.train_group", no_room)  # a chunk that does not fit trains one by one
    params = {k: p.detach().clone() for k, p in SPEC.build().named_parameters()}
    tasks = [TrainTask(d, 0.5, 0, None, "uniform") for d in range(4)]
    res = host.train(1, params, {0: _plan()}, tasks)
    status = {r.device_id: r.status for r in res.reports}
    assert status == {0: "ok", 1: "ok", 2: OOM, 3: "ok"} and res.partial.devices == 3


@CUDA
@pytest.mark.parametrize("mib, want", [(12, {OOM}), (160, {"ok"})], ids=["too-small-for-one", "room-for-one"])
def test_a_real_gpu_memory_cap_gives_oom_reports_not_a_crash(mib, want):
    # The caching allocator takes large (> 1 MiB) blocks in 20 MiB segments: with 12 MiB of
    # room a device's 1.3 MiB activations find none; with 160 MiB one device fits and a
    # batched chunk (64 slots: 64x the activations) does not, so its devices retry one by one.
    import gc

    from raysim.hosts import cuda

    gc.collect()
    torch.cuda.empty_cache()
    spec = cnn_spec((3, 16, 16), 4, [64, 64], 16)
    g = torch.Generator().manual_seed(3)
    n = 16 * 20
    x, y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)   # 0.98 MiB
    offs = np.arange(0, n + 1, 20)
    # The cap counts what the process holds already (cuBLAS workspaces outlive empty_cache).
    room = torch.cuda.memory_reserved(0) + mib * 2**20
    share = room / torch.cuda.get_device_properties(0).total_memory - cuda.claimed()
    trainer = Trainer(LocalSGD(), 1, 20, 0, device="cuda", gpu_share=share, batched="on")
    host = HostCore(spec, trainer, x.numpy(), y.numpy(), np.arange(n), offs)
    plan = Static().plan(spec, 1.0, 1, -1, None, 0)
    params = {k: p.detach().clone() for k, p in spec.build().named_parameters()}
    res = host.train(1, params, {0: plan}, [TrainTask(d, 1.0, 0, None, "uniform") for d in range(16)])
    assert {r.status for r in res.reports} == want and len(res.reports) == 16
    del host
    gc.collect()
    torch.cuda.empty_cache()


def test_a_chunk_out_of_memory_is_freed_before_its_devices_retry(monkeypatch):
    # Inside `except`, the traceback holds the failed call's frames and so its tensors:
    # retrying there would find the memory still taken.
    import weakref

    held, alive = [], []

    def no_room(*a, **k):
        chunk_tensors = torch.zeros(4)          # stands for the chunk's stacked weights
        held.append(weakref.ref(chunk_tensors))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    real = Trainer.train

    def train(self, *a, **k):
        alive.append(held[0]() is not None)
        return real(self, *a, **k)

    monkeypatch.setattr("raysim.client.batched.train_group", no_room)
    monkeypatch.setattr(Trainer, "train", train)
    params = {k: p.detach().clone() for k, p in SPEC.build().named_parameters()}
    res = _host("on").train(1, params, {0: _plan()}, [TrainTask(d, 0.5, 0, None, "uniform") for d in range(3)])
    assert [r.status for r in res.reports] == ["ok"] * 3
    assert alive == [False] * 3


def test_gpu_memory_shares_add_up_in_one_process_and_end_with_their_owners(monkeypatch):
    from raysim.hosts import cuda

    caps = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=0: caps.append(round(f, 6)))
    flags = [(torch.backends.cudnn, f) for f in ("deterministic", "benchmark", "allow_tf32")]
    flags.append((torch.backends.cuda.matmul, "allow_tf32"))
    before = [getattr(o, f) for o, f in flags]

    class Owner:
        pass

    try:
        _claims_add_up(cuda, caps, Owner)
    finally:
        for (o, f), v in zip(flags, before):
            setattr(o, f, v)


def _claims_add_up(cuda, caps, Owner):
    import gc

    base = cuda.claimed()
    a, b, ev = Owner(), Owner(), Owner()
    cuda.cuda_host(0.2, owner=a)
    cuda.cuda_host(0.2, owner=b)          # the in-process engine: two hosts and the evaluator
    assert cuda.cuda_host(cuda.EVAL_GPU_SHARE, owner=ev) == pytest.approx(base + 0.45)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.allow_tf32
    del a
    gc.collect()
    assert cuda.claimed() == pytest.approx(base + 0.25) and caps[-1] == pytest.approx(base + 0.25)
    many = [Owner() for _ in range(6)]
    for o in many:
        cuda.cuda_host(0.2, owner=o)
    assert caps[-1] == 1.0                # never more than the whole GPU
    del b, ev, many, o
    gc.collect()
    assert cuda.claimed() == pytest.approx(base)


def test_cuda_without_a_gpu_is_one_line(monkeypatch):
    from raysim.runtime import gpu

    monkeypatch.setattr(gpu, "_cuda_here", lambda: False)
    with pytest.raises(gpu.DeviceError, match="has no CUDA GPU"):
        gpu.check_device_here("cuda", None)
    gpu.check_device_here("cuda", "10.0.0.1:6379")  # a cluster is asked once Ray is up
    assert gpu.local_device("auto") == "cpu" and gpu.local_device("cpu") == "cpu"
    monkeypatch.setattr(gpu, "cluster_gpus", lambda: 0.0)
    assert gpu.resolve_device("auto", "pooled") == "cpu"
    with pytest.raises(gpu.DeviceError, match="the Ray cluster has no CUDA GPU"):
        gpu.resolve_device("cuda", "pooled")
    monkeypatch.setattr(gpu, "cluster_gpus", lambda: 2.0)
    assert gpu.resolve_device("auto", "pooled") == "cuda" and gpu.resolve_device("auto", "dedicated") == "cpu"


def test_gpu_hosts_take_fractional_gpus(monkeypatch):
    import ray

    from raysim.runtime import gpu, session

    monkeypatch.setattr(ray, "available_resources", lambda: {"GPU": 0.95, "CPU": 16})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"GPU": 1.0, "CPU": 16}}])
    monkeypatch.setattr(session, "cluster_cpus", lambda: 16)
    opts = session.host_placements("cpu", None, 1, gpu_share=0.2)
    assert len(opts) == 4 and all(o["num_gpus"] == 0.2 for o in opts)   # beside the coordinator's 0.05
    with pytest.raises(gpu.DeviceError, match="runtime.hosts: 5 hosts"):
        session.host_placements("cpu", 5, 1, gpu_share=0.2)
    assert "num_gpus" not in session.host_placements("cpu", 2, 1)[0]
    # A fractional request never spans two GPUs: two GPUs (one with the evaluator's 0.05) hold
    # two hosts of 0.6 or four of 0.35, not the three and five their sum would.
    monkeypatch.setattr(ray, "available_resources", lambda: {"GPU": 1.95, "CPU": 16})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"GPU": 2.0}},
                                               {"Alive": False, "Resources": {"GPU": 4.0}}])
    assert len(session.host_placements("cpu", None, 1, gpu_share=0.6)) == 2
    assert len(session.host_placements("cpu", None, 1, gpu_share=0.35)) == 4
    with pytest.raises(gpu.DeviceError, match="the 1.95 free hold 2"):
        session.host_placements("cpu", 3, 1, gpu_share=0.6)
    assert gpu.hosts_that_fit(0.5, [1.0, 0.5], 0.0) == 3 and gpu.hosts_that_fit(0.25, [1.0], 0.8) == 0


@CUDA
def test_batched_on_the_gpu_equals_the_cpu_loop():
    x, y = _data()
    m = _module()
    start = {k: p.detach().clone() for k, p in m.named_parameters()}
    client = LocalSGD(lr=0.1, momentum=0.9)
    cuda = torch.device("cuda")
    mg = _module().to(cuda)
    got = train_group(mg, client, {k: v.to(cuda) for k, v in start.items()}, x.to(cuda), y.to(cuda),
                      _works(range(6)), 2, 20)
    for b, w in zip(got, _works(range(6))):
        r = _loop(m, client, start, x, y, w, 2)
        assert b.steps == r.steps and b.delta["classifier.bias"].device.type == "cpu"
        for k in r.delta:
            torch.testing.assert_close(b.delta[k], r.delta[k], rtol=1e-3, atol=1e-5)


@CUDA
def test_a_gpu_host_trains_and_evaluates_on_the_gpu():
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=1, **{"runtime.device": "cuda",
                                                                                "train.batched": "on"}))
    sim = local_sim(sc, hosts=1)
    assert sim.mode.backend.cores[0].x.device.type == "cuda" and sim.eval_device.type == "cuda"
    out = sim.step()
    assert out.record.trained > 0 and out.evals


def test_the_run_summary_says_how_hosts_trained():
    from types import SimpleNamespace

    from raysim.report.markdown import _training_line

    def line(mode, device="cpu", choices=None):
        return _training_line(SimpleNamespace(manifest={"info": {"device": device, "batched": choices or {}}},
                                              scenario={"train": {"batched": mode}}))

    assert line("off") == "cpu, one device at a time" and line("on", "cuda") == "cuda, batched"
    assert line("auto", choices={"1.0": False, "0.125": True, "0.5": True}) == \
        "cpu, auto: batched at rate 0.5, 0.125; one at a time at rate 1"
    assert _training_line(SimpleNamespace(manifest={"info": {}}, scenario={})) == ""   # an older run directory
    fell = _training_line(SimpleNamespace(manifest={"info": {"device": "cpu", "batched": {"1.0": False, "0.5": True},
                                                            "unbatched": {"1.0": "batched training fails (...)"}}},
                                          scenario={"train": {"batched": "on"}}))
    assert fell == "cpu, on: batched at rate 0.5; one at a time at rate 1 (why: the manifest's info.unbatched)"
    assert line("on", choices={"1.0": True}) == "cpu, batched"


# ------------------------------------------------------------------ functional calls, fallbacks
class FunctionalPoolCNN(nn.Module):
    """A plain CNN written with functional calls, as users write them: torch.fx records
    `F.max_pool2d(x, 2)` with every keyword (`return_indices=False`, `ceil_mode=False`...)."""

    def __init__(self, in_ch: int = 1, classes: int = 4):
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)                                  # 8 -> 4
        x = F.avg_pool2d(F.leaky_relu(self.c2(x), negative_slope=0.1), 2, stride=2)   # 4 -> 2
        x = F.max_pool2d(F.relu(self.c3(x), inplace=False), kernel_size=2, stride=1, padding=1)  # 2 -> 3
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, output_size=1), 1)
        return self.fc(pooled + x.mean(dim=(2, 3), keepdim=False))


class FunctionalDropoutCNN(FunctionalPoolCNN):
    """Functional dropout: devices' random draws cannot be batched (vmap refuses them)."""

    def forward(self, x):
        return super().forward(F.dropout(x, 0.1, training=self.training))


def fpool_cnn(input_shape, num_classes):
    torch.manual_seed(0)
    return FunctionalPoolCNN(input_shape[0], num_classes)


def fdrop_cnn(input_shape, num_classes):
    torch.manual_seed(0)
    return FunctionalDropoutCNN(input_shape[0], num_classes)


def test_functional_calls_with_keywords_train_grouped_as_the_loop():
    import cloudpickle

    from raysim.client.batched_forward import canonical, max_pool2d

    x, y = _data()
    m = fpool_cnn((1, 8, 8), 4)
    program, why = compile_grouped(m, 4)
    assert program is not None, why
    # A pickled submodel graph (a host's) holds copies of the max poolings (closures): still matched.
    copy = cloudpickle.loads(cloudpickle.dumps(F.max_pool2d))
    assert copy is not F.max_pool2d and canonical(copy) is F.max_pool2d
    every = {"kernel_size": 2, "stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
    assert torch.equal(max_pool2d(x[:4], **every), F.max_pool2d(x[:4], **every))   # every keyword of F's
    start = {k: p.detach().clone() for k, p in m.named_parameters()}
    client = LocalSGD(lr=0.1, momentum=0.9)
    caps = [None, 1, None, 3, None, 2]
    got = train_group(m, client, start, x, y, _works(range(6), caps), 2, 20, grouped=True)
    for d, (b, w) in enumerate(zip(got, _works(range(6), caps))):
        r = _loop(m, client, start, x, y, w, 2)
        assert b.steps == r.steps and abs(b.loss - r.loss) < 1e-5, d
        for k in r.delta:
            torch.testing.assert_close(b.delta[k], r.delta[k], rtol=1e-4, atol=1e-6)


def test_a_grouped_program_that_fails_its_check_is_not_used(monkeypatch):
    # The held-out failure: a route that raised TypeError when the first batch ran. Now
    # arguments are bound when the program is built (unknown ones: no grouped form), and a
    # program whose forward fails or differs from the module's trains under vmap instead.
    from raysim.client import batched
    from raysim.client import batched_forward as grouped

    with pytest.raises(grouped.Unsupported, match="'output_ratio'"):
        grouped._bind(F.max_pool2d, grouped._MAX_POOL, (2,), {"output_ratio": 0.5})
    assert grouped._bind(F.avg_pool2d, grouped._AVG_POOL, (2,), {"stride": 1}) == {"kernel_size": 2, "stride": 1}

    def broken(*a, **k):
        raise TypeError("max_pool2d() got an unexpected keyword argument 'return_indices'")

    monkeypatch.setattr(grouped, "max_pool2d", broken)
    x, y = _data()
    m = fpool_cnn((1, 8, 8), 4)
    assert grouped.compile_grouped(m, 4)[0] is not None          # compiles, but would fail when run
    assert batched.grouped_program(m, (1, 8, 8), x.device) is None
    assert batched._PROGRAMS[m][1].startswith("its grouped forward fails (TypeError")
    start = {k: p.detach().clone() for k, p in m.named_parameters()}
    client = LocalSGD(lr=0.1)
    got = train_group(m, client, start, x, y, _works(range(3)), 1, 20)        # under vmap
    for b, w in zip(got, _works(range(3))):
        r = _loop(m, client, start, x, y, w, 1)
        for k in r.delta:
            torch.testing.assert_close(b.delta[k], r.delta[k], rtol=1e-4, atol=1e-6)


def _whole_host(factory, batched: str) -> HostCore:
    from raysim.models.base import ModelSpec

    x, y = _data()
    offs = np.concatenate([[0], np.cumsum(SIZES)])
    spec = ModelSpec.whole("test", factory, (1, 8, 8), 4)
    trainer = Trainer(LocalSGD(lr=0.1, momentum=0.9), 1, 20, 0, batched=batched)
    return HostCore(spec, trainer, x.numpy(), y.numpy(), np.arange(offs[-1]), offs)


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_a_functional_pooling_cnn_trains_batched_on_and_auto_as_the_loop(mode, monkeypatch):
    from raysim.client import batch_choice as autobatch
    from raysim.client import batched
    from raysim.server import aggregate

    monkeypatch.setattr(autobatch, "prefer_batched", lambda loop_s, batched_s: True)  # auto: take batched
    calls = []
    real = batched.train_group
    monkeypatch.setattr(batched, "train_group", lambda *a, **k: calls.append(len(a[5])) or real(*a, **k))
    params = {k: p.detach().clone() for k, p in fpool_cnn((1, 8, 8), 4).named_parameters()}
    tasks = [TrainTask(d, 1.0, 0, None, "uniform") for d in range(6)]
    res = {}
    for m in ("off", mode):
        host = _whole_host(fpool_cnn, m)
        plan = Static().plan(host.spec, 1.0, 1, -1, None, 0)
        if m == mode:
            assert host.choose_batching([1.0]) == {1.0: True} and not host.reasons
            calls.clear()
        res[m] = host.train(1, params, {0: plan}, tasks)
        assert sum(calls) == (6 if m == mode else 0)   # the round's six devices trained batched (or not)
    a, b = res[mode].partial, res["off"].partial
    assert [r.status for r in res[mode].reports] == ["ok"] * 6 and a.devices == b.devices == 6
    for k in b.sums:
        np.testing.assert_allclose(a.sums[k] / aggregate._SCALE, b.sums[k] / aggregate._SCALE, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_a_rate_whose_batched_training_cannot_be_built_trains_per_device_and_says_why(mode):
    host = _whole_host(fdrop_cnn, mode)
    assert host.choose_batching([1.0]) == {1.0: False}
    assert host.reasons[1.0].startswith("batched training fails (RuntimeError: vmap") and len(host.reasons[1.0]) < 200
    params = {k: p.detach().clone() for k, p in fdrop_cnn((1, 8, 8), 4).named_parameters()}
    res = host.train(1, params, {0: Static().plan(host.spec, 1.0, 1, -1, None, 0)},
                     [TrainTask(d, 1.0, 0, None, "uniform") for d in range(4)])
    assert [r.status for r in res.reports] == ["ok"] * 4


def test_auto_records_a_fallback_in_the_manifest(ray_local, tmp_path):
    import json

    import raysim

    over = tiny_overrides(rounds=1, **{"train.batched": "auto", "compression.strategy": "full",
                                       "runtime.hosts": 1, "eval.every": 1})
    run = raysim.simulate("scenarios/quickstart.yaml", model=fdrop_cnn, overrides=over, out=tmp_path)
    info = json.loads((run.path / "manifest.json").read_text())["info"]
    assert info["batched"] == {"1.0": False}
    assert info["unbatched"]["1.0"].startswith("batched training fails")
    assert (run.clients.status == "ok").any()
