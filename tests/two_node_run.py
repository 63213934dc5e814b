"""Run a tiny scenario on a two-node local Ray cluster and in-process on one machine; print a JSON verdict.

Started as a subprocess by test_cluster.py so that the cluster's processes and the test
process's own Ray instance never mix.
"""

import json
import subprocess
import sys
from pathlib import Path

import ray
import torch
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).parent))
from helpers import coordinator, tiny_overrides  # noqa: E402

from raysim.scenario.schema import load_scenario  # noqa: E402


def raysim_run(out: Path, address: str) -> Path:
    sets = [a for o in tiny_overrides(**{"runtime.hosts": 2}) for a in ("--set", o)]
    cmd = [sys.executable, "-m", "raysim", "run", "scenarios/quickstart.yaml", *sets, "--out", str(out),
           "--quiet", "--no-report", "--address", address]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return next(out.iterdir())


def plugin_run(tmp: Path, address: str) -> dict:
    """`raysim run --address` with a scenario naming components by import path from a module that
    lives outside the repository, on the driver's PYTHONPATH only."""
    import os  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    mods = tmp / "plugins"
    mods.mkdir()
    (mods / "mylab_parts.py").write_text((Path(__file__).parent / "plugin_components.py").read_text())
    sc = {"name": "plug", "rounds": 2, "fleet": {"devices": 40}, "selection": {"per_round": 6},
          "data": {"dataset": "mylab_parts:blobs", "partition": {"kind": "natural"}},
          "model": {"arch": "mylab_parts:tiny_mlp", "rates": [1.0, 0.5]},
          "compression": {"strategy": "mylab_parts:LastChannels"},
          "assignment": {"policy": "fixed", "fixed_rate": 0.5},
          "server": {"optimizer": "mylab_parts:CountingAvg"}, "deadline": {"seconds": None},
          "runtime": {"hosts": 3}, "output": {"checkpoint_every": 1, "plots": False}}
    path = tmp / "plug.yaml"
    path.write_text(yaml.safe_dump(sc))
    out = tmp / "plugin-runs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(mods), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-m", "raysim", "run", str(path), "--address", address, "--out", str(out),
                        "--quiet", "--no-report"], capture_output=True, text=True, timeout=300, env=env)
    if p.returncode != 0:
        return {"error": p.stderr[-2000:]}
    run = next(out.iterdir())
    info = json.loads((run / "manifest.json").read_text())["info"]
    import pandas as pd  # noqa: PLC0415

    clients = pd.read_parquet(run / "clients.parquet")
    ok = clients[clients["status"] == "ok"]
    moves = torch.load(sorted((run / "checkpoints").glob("round-*.pt"))[-1], weights_only=True)["server"]
    return {"host_nodes": len(set(info["host_nodes"])), "trained": len(ok), "rates": sorted(set(ok["rate"])),
            "model": info["components"]["model"], "moves_max": int(moves["body.0.weight"]["moves"].max())}


def one_node() -> dict:
    """The cluster run's scenario in this process, on one machine (the engine without Ray, which
    gives a Ray run's numbers): its final weights."""
    from raysim.inprocess import local_simulation  # noqa: PLC0415

    sim = local_simulation(load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"runtime.hosts": 2})), hosts=2)
    while sim.round < sim.cfg.rounds:
        sim.step()
    return sim.params


def final(run: Path) -> dict:
    ck = sorted((run / "checkpoints").glob("round-*.pt"))[-1]
    return torch.load(ck, weights_only=True)["params"]


def copies_and_node_loss(cluster: Cluster, worker) -> tuple[dict, dict]:
    """Which stored copy of the training data the coordinator and each host (on which node) read,
    with one host per CPU and with one host per node; then, on the per-node coordinator, the
    worker node is removed after round 1: statuses of rounds 2 and 3."""
    copies = {}
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        for per in ("cpu", "node"):
            sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"runtime.hosts_per": per, "rounds": 3}))
            coord = coordinator(sc)
            refs, nodes = ray.get([coord.data_ref_ids.remote(), coord.host_nodes.remote()])
            copies[per] = {"hosts": len(nodes), "host_nodes": len(set(nodes)),
                           "one_copy": all(h == refs["coordinator"] for h in refs["hosts"])}
            if per == "cpu":
                ray.kill(coord)
        # The per-node coordinator (one host per node) goes on to lose the worker node.
        ray.get(coord.step.remote())
        before = ray.get(coord.host_nodes.remote())
        beside_driver = ray.get(coord.node_id.remote()) == ray.get_runtime_context().get_node_id()
        cluster.remove_node(worker)
        outs = [ray.get(coord.step.remote()) for _ in range(2)]
        after = ray.get(coord.host_nodes.remote())
        ray.kill(coord)
    finally:
        ray.shutdown()
    lost = {"coordinator_beside_driver": beside_driver, "host_nodes_before": len(set(before)),
            "host_nodes_after": len(set(after)),
            "hosts_after": len(after),
            "failed": [o.round_row["n_failed"] for o in outs], "trained": [o.round_row["trained"] for o in outs]}
    return copies, lost


def main(tmp: Path) -> None:
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        multi = raysim_run(tmp / "cluster", cluster.address)
        plugins = plugin_run(tmp, cluster.address)
        copies, lost = copies_and_node_loss(cluster, worker)
    finally:
        cluster.shutdown()
    nodes = json.loads((multi / "manifest.json").read_text())["info"]["host_nodes"]
    a, b = final(multi), one_node()
    print(json.dumps({"distinct_nodes": len(set(nodes)), "same_params": all(torch.equal(a[k], b[k]) for k in a),
                      "layouts": copies, "node_loss": lost, "plugins": plugins}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
