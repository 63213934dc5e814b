"""Bring your own: components written outside raysim run through the same engine as the built-ins."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from plugin_components import CountingAvg, LastChannels, StepsAsLoss, blobs, tiny_mlp

import raysim
from raysim.api import FedProx, Fixed, LocalData, LocalSGD
from raysim.cli import main

ROUNDS = 3


def scenario(**runtime):
    return {"name": "plug", "seed": 3, "rounds": ROUNDS, "fleet": {"devices": 40}, "selection": {"per_round": 6},
            "data": {"partition": {"kind": "natural"}}, "model": {"rates": [1.0, 0.5]},
            "deadline": {"seconds": None}, "runtime": {"hosts": 2, **runtime},
            "output": {"checkpoint_every": 1, "plots": False}}


def final_state(run):
    ck = sorted((run.path / "checkpoints").glob("round-*.pt"))[-1]
    return torch.load(ck, weights_only=True)


@pytest.fixture(scope="module")
def objects_run(ray_local, tmp_path_factory):
    return raysim.simulate(scenario(), model=tiny_mlp, dataset=blobs, strategy=LastChannels(), assigner=Fixed(0.5),
                           client=StepsAsLoss(lr=0.1), server=CountingAvg(), out=tmp_path_factory.mktemp("runs"))


def test_the_ray_runner_runs_components_written_in_a_test_file(objects_run):
    run = objects_run
    assert run.manifest["status"] == "complete"
    given = {k for k, v in run.manifest["info"]["components"].items() if v == "object"}
    assert given == {"model", "dataset", "strategy", "assigner", "client", "server"}
    assert set(run.manifest["info"]["components"].values()) == {"object", "built-in"}  # selector and channels
    ok = run.clients[run.clients["status"] == "ok"]
    assert len(ok) > 0 and (ok["rate"] == 0.5).all(), "the assigner given as an object decided the rates"
    assert (ok["loss"] == ok["steps"]).all(), "the client algorithm given as an object trained the devices"
    moves = final_state(run)["server"]["body.0.weight"]["moves"]
    # body.0 has 24 outputs; at rate 0.5 LastChannels keeps rows 12..23: only those ever moved,
    # once per server step, through the server optimizer given as an object.
    assert (moves[:12] == 0).all() and (moves[12:] == ROUNDS).all()
    assert run.rounds["accuracy"].notna().all()


def test_plug_in_runs_are_bit_identical_across_host_counts(objects_run, tmp_path):
    one = raysim.simulate(scenario(hosts=1), model=tiny_mlp, dataset=blobs, strategy=LastChannels(),
                          assigner=Fixed(0.5), client=StepsAsLoss(lr=0.1), server=CountingAvg(), out=tmp_path)
    a, b = final_state(objects_run)["params"], final_state(one)["params"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_yaml_names_components_by_import_path(ray_local, tmp_path):
    sc = scenario(hosts=1)  # one device host imports the components as well as two would
    sc["model"].update(arch="plugin_components:tiny_mlp", params={"hidden": 16})
    sc["data"].update(dataset="plugin_components:blobs", params={"n": 1200})
    sc["compression"] = {"strategy": "plugin_components:LastChannels"}
    sc["train"] = {"algorithm": "fedprox", "params": {"mu": 0.1}, "lr": 0.1}
    sc["server"] = {"optimizer": "plugin_components:CountingAvg", "params": {"lr": 0.5}}
    sc["assignment"] = {"policy": "fixed", "fixed_rate": 0.5}
    path = tmp_path / "plug.yaml"
    path.write_text(yaml.safe_dump(sc))
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet", "--no-report"]) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    info = json.loads((run_dir / "manifest.json").read_text())["info"]
    assert info["components"]["model"] == "plugin_components:tiny_mlp"
    assert info["components"]["client"] == "built-in"
    run = raysim.load_run(run_dir)
    trained = run.clients[run.clients["status"] == "ok"]
    assert len(trained) and (trained["rate"] == 0.5).all(), "a plain module, sliced automatically, trained at 1/2"
    moves = final_state(run)["server"]["body.0.weight"]["moves"]
    assert moves.shape == (16, 12) and (moves[:8] == 0).all() and (moves[8:] == ROUNDS).all()


@pytest.mark.parametrize("key, value, says", [
    ("model.arch", "no_such_module:Net", "model.arch: cannot import 'no_such_module:Net': no module named 'no_such_module'"),
    ("model.arch", "plugin_components:NoSuchNet", "has no attribute 'NoSuchNet'"),
    ("model.arch", "mlp2", "unknown name 'mlp2'"),
    ("train.params", "{nu: 1}", "train.params.nu: unknown parameter"),
    ("train.algorithm", "fedprox", None),
    ("server.params", "{lr: fast}", "server.params.lr: "),
    ("compression.strategy", "plugin_components:tiny_mlp", "is not a raysim.submodel.strategies.Strategy"),
    ("model.arch", "plugin_components:unsliceable", "cannot slice: module '(root)' calls"),
])
def test_bad_components_are_one_line_errors(tmp_path, capsys, key, value, says):
    sets = ["model.arch=plugin_components:tiny_mlp", "data.dataset=plugin_components:blobs", "fleet.devices=40",
            "selection.per_round=6", "model.rates=[1,0.5]", f"{key}={value}"]
    if says is None:  # the control: the same scenario with a valid value is accepted
        sets.append("train.params={mu: 0.5}")
    code = main(["fleet", "scenarios/quickstart.yaml", *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err
    if says is None:
        assert code == 0, err
        return
    assert code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_model_that_cannot_be_sliced_still_trains_whole(capsys):
    sets = ["model.arch=plugin_components:unsliceable", "data.dataset=plugin_components:blobs",
            "fleet.devices=40", "selection.per_round=6", "compression.strategy=full"]
    assert main(["fleet", "scenarios/quickstart.yaml", *[a for s in sets for a in ("--set", s)]]) == 0
    assert "rate 1 " in capsys.readouterr().out


def test_fedprox_pulls_the_update_towards_the_start():
    torch.manual_seed(0)
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    deltas = []
    for algo in (LocalSGD(lr=0.2), FedProx(lr=0.2, mu=5.0)):
        torch.manual_seed(1)
        model = tiny_mlp((12,), 3)
        start = {k: p.detach().clone() for k, p in model.named_parameters()}
        data = LocalData(x, y, epochs=3, batch_size=16, max_steps=None, generator=torch.Generator().manual_seed(2))
        res = algo.train(model, data, start)
        assert res.finite and res.steps == 12
        deltas.append(sum(float(d.norm()) for d in res.delta.values()))
    assert deltas[1] < 0.8 * deltas[0], deltas
    assert FedProx(mu=0.0).objective is not None


def test_reading_results_imports_neither_torch_nor_ray(objects_run, tmp_path):
    code = ("import sys, raysim; run = raysim.load_run(sys.argv[1]); raysim.load_runs([sys.argv[1]]); "
            "from raysim.cli import main; assert main(['report', sys.argv[1], '--out', sys.argv[2]]) == 0; "
            "assert len(run.rounds) == %d; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))" % ROUNDS)
    p = subprocess.run([sys.executable, "-c", code, str(objects_run.path), str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout
    assert (tmp_path / "report.md").is_file()


def test_a_custom_dataset_is_checked_on_load(tmp_path):
    from raysim.data.base import DataError, dataset_from

    x, y, xt, yt, g = blobs(0)
    assert dataset_from("blobs", (x, y, xt, yt, g)).num_classes == 3
    bad_x = x.copy()
    bad_x[3, 1] = np.nan
    for arrays, says in [((bad_x, y, xt, yt), "non-finite"), ((x, y[:-1], xt, yt), "y_train must be integer labels"),
                         ((x[:0], y[:0], xt, yt), "N > 0"), ((x, y, xt, yt, g[:5]), "groups must be"),
                         ((x, y.astype(float), xt, yt), "y_train must be integer"), ([x, y], "must return")]:
        with pytest.raises(DataError, match=says):
            dataset_from("blobs", arrays)


def test_a_run_made_from_objects_resumes_from_python_not_the_cli(objects_run, tmp_path, capsys):
    common = dict(model=tiny_mlp, dataset=blobs, strategy=LastChannels(), assigner=Fixed(0.5),
                  client=StepsAsLoss(lr=0.1), server=CountingAvg())
    whole = objects_run  # the same scenario and objects, run without a stop
    from raysim.runtime.runner import run
    from raysim.scenario.resolve import components

    sc = raysim.api.as_scenario(scenario())
    part = run(sc, out_root=str(tmp_path / "part"), progress=False, stop_after=1,
               comps=components(sc, **common))
    assert main(["run", "--resume", str(part.path)]) == 2
    assert "came from Python objects" in capsys.readouterr().err
    resumed = raysim.simulate(resume=part.path, **common)
    a, b = final_state(whole)["params"], final_state(resumed)["params"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", ["static", "rolling", "random", "magnitude"])
def test_a_model_from_a_test_file_trains_below_rate_1_with_every_width_strategy(strategy):
    from raysim.inprocess import local_simulation

    sc = raysim.api.as_scenario({**scenario(), "model": {"arch": "plugin_components:tiny_mlp", "rates": [1.0, 0.5, 0.25]},
                                 "data": {"dataset": "plugin_components:blobs", "partition": {"kind": "natural"}},
                                 "compression": {"strategy": strategy},
                                 "assignment": {"policy": "fixed", "fixed_rate": 0.25}})
    sim = local_simulation(sc)
    out = sim.step()
    ok = [r for r, s in zip(out.clients.rate, out.clients.status) if s == "ok"]
    assert ok and set(ok) == {0.25}
    # model.hidden (default 128) reaches the factory's `hidden`: section settings go to the
    # component parameters of the same name (docs/plugins.md)
    assert sim.spec.groups and all(w == 128 for w in sim.spec.groups.values())
