"""The README's cluster recipe, for real: `ray start` a head and a worker node (loopback, two
ports, token authentication as `ray start --head` turns it on), run raysim through `--address`
with components named by import path, and stop exactly the processes those `ray start`s began."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import tiny_overrides
from ray_start import free_port, start_cluster, token_env

from raysim.inprocess import local_simulation
from raysim.rundir.reader import latest_checkpoint, load_checkpoint
from raysim.scenario.schema import load_scenario

SETS = [a for o in tiny_overrides(rounds=2) for a in ("--set", o)]  # runtime.num_cpus only sizes a local instance


def raysim_run(out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysim", "run", "scenarios/quickstart.yaml", *SETS, "--out", str(out),
                           "--quiet", "--no-report", *extra], env=env, capture_output=True, text=True, timeout=300)


def plugin_scenario(tmp: Path) -> tuple[Path, Path]:
    """A scenario naming components by import path from a module outside the repository (a
    plain MLP that raysim slices, an own strategy and server optimizer, an own dataset): the
    module's folder and the scenario file."""
    mods = tmp / "plugins"
    mods.mkdir()
    (mods / "mylab_parts.py").write_text((Path(__file__).parents[1] / "plugin_components.py").read_text())
    sc = {"name": "plug", "rounds": 2, "fleet": {"devices": 40}, "selection": {"per_round": 6},
          "data": {"dataset": "mylab_parts:blobs", "partition": {"kind": "natural"}},
          "model": {"arch": "mylab_parts:tiny_mlp", "rates": [1.0, 0.5]},
          "compression": {"strategy": "mylab_parts:LastChannels"},
          "assignment": {"policy": "fixed", "fixed_rate": 0.5},
          "server": {"optimizer": "mylab_parts:CountingAvg"}, "deadline": {"seconds": None},
          "runtime": {"hosts": 2}, "output": {"checkpoint_every": 1, "plots": False}}
    path = tmp / "plug.yaml"
    path.write_text(yaml.safe_dump(sc))
    return mods, path


@pytest.mark.slow
def test_ray_start_cluster_runs_a_scenario_on_both_nodes(tmp_path, monkeypatch):
    # A home that holds a Ray token, as on any machine where Ray has run: `ray start --head`
    # then enables token authentication. The driver gets no RAY_AUTH_MODE: raysim must cope.
    env = token_env(tmp_path / "home")
    address, nodes = start_cluster(tmp_path, env)
    try:
        assert "Token authentication is enabled" in (tmp_path / "head.log").read_text()
        # Components by import path from a module on the driver's PYTHONPATH only reach the
        # hosts on both nodes.
        mods, scenario = plugin_scenario(tmp_path)
        plug_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(mods), env.get("PYTHONPATH")]))}
        p = subprocess.run([sys.executable, "-m", "raysim", "run", str(scenario), "--address", address, "--out",
                            str(tmp_path / "cluster"), "--quiet", "--no-report"], env=plug_env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        run = next((tmp_path / "cluster").iterdir())
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert len(set(manifest["info"]["host_nodes"])) == 2, "device hosts on both nodes"
        assert manifest["info"]["components"]["model"] == "mylab_parts:tiny_mlp"
        ok = pd.read_parquet(run / "clients.parquet").query("status == 'ok'")
        assert len(ok) > 0 and set(ok["rate"]) == {0.5}
        ck = load_checkpoint(latest_checkpoint(run))
        assert int(ck["server"]["body.0.weight"]["moves"].max()) == 2   # the own server optimizer's state
        # ... and the numbers of the same scenario in this process, on one machine
        monkeypatch.syspath_prepend(str(mods))
        sim = local_simulation(load_scenario(scenario), hosts=2)
        while sim.round < sim.cfg.rounds:
            sim.step()
        assert all(torch.equal(ck["params"][k], sim.params[k]) for k in sim.params)

        # The three runs below are independent of each other: they run at once.
        bare = {**env, "HOME": str(tmp_path / "no-token")}
        with ThreadPoolExecutor(max_workers=3) as pool:
            refused = pool.submit(raysim_run, tmp_path / "refused", bare, "--address", address)
            nowhere = pool.submit(raysim_run, tmp_path / "nowhere", env, "--address", f"127.0.0.1:{free_port()}")
            own = pool.submit(raysim_run, tmp_path / "local", env, "--set", "runtime.num_cpus=1")
        # Without the token the refusal is one line that names the fix.
        p = refused.result()
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
        assert lines[0].startswith("raysim: error: --address")
        assert "requires token authentication" in p.stderr and "auth_token" in p.stderr
        # Nothing listening: one line at once, not minutes of retries.
        p = nowhere.result()
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no Ray cluster answers there" in p.stderr
        # With the cluster up (and its address file written), a run without an address starts its own.
        p = own.result()
        assert p.returncode == 0, p.stderr[-3000:]
        local = json.loads((next((tmp_path / "local").iterdir()) / "manifest.json").read_text())
        assert len(set(local["info"]["host_nodes"])) == 1
        assert not set(local["info"]["host_nodes"]) & set(manifest["info"]["host_nodes"])
        assert not (tmp_path / "refused").exists() and not (tmp_path / "nowhere").exists()
    finally:
        left = [node.stop() for node in reversed(nodes)]
    assert left == [[], []], "every process the ray starts began is gone"
