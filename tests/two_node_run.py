"""Run a tiny scenario on a two-node local Ray cluster and on one node; print a JSON verdict.

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

from raysim.config import load_scenario  # noqa: E402

from raysim.runtime.runner import prepare  # noqa: E402


def raysim_run(out: Path, address: str | None) -> Path:
    sets = [a for o in tiny_overrides(**{"runtime.hosts": 2}) for a in ("--set", o)]
    cmd = [sys.executable, "-m", "raysim", "run", "scenarios/quickstart.yaml", *sets, "--out", str(out),
           "--quiet", "--no-report"]
    if address:
        cmd += ["--address", address]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return next(out.iterdir())


def final(run: Path) -> dict:
    ck = sorted((run / "checkpoints").glob("round-*.pt"))[-1]
    return torch.load(ck, weights_only=True)["params"]


def data_copies(address: str) -> dict:
    """Which stored copy of the training data the coordinator and each host (on which node) read,
    with one host per CPU and with one host per node."""
    out = {}
    ray.init(address=address, logging_level="ERROR")
    try:
        for per in ("cpu", "node"):
            sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"runtime.hosts_per": per}))
            coord = coordinator(sc)
            refs, nodes = ray.get([coord.data_ref_ids.remote(), coord.host_nodes.remote()])
            ray.kill(coord)
            out[per] = {"hosts": len(nodes), "host_nodes": len(set(nodes)),
                        "one_copy": all(h == refs["coordinator"] for h in refs["hosts"])}
    finally:
        ray.shutdown()
    return out


def node_loss(cluster: Cluster, worker) -> dict:
    """One host per node; the worker node is removed after round 1. Statuses of rounds 2 and 3."""
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"runtime.hosts_per": "node", "rounds": 3}))
        coord = coordinator(sc)
        ray.get(coord.step.remote())
        before = ray.get(coord.host_nodes.remote())
        beside_driver = ray.get(coord.node_id.remote()) == ray.get_runtime_context().get_node_id()
        cluster.remove_node(worker)
        outs = [ray.get(coord.step.remote()) for _ in range(2)]
        after = ray.get(coord.host_nodes.remote())
        ray.kill(coord)
    finally:
        ray.shutdown()
    return {"coordinator_beside_driver": beside_driver, "host_nodes_before": len(set(before)), "host_nodes_after": len(set(after)), "hosts_after": len(after),
            "failed": [o.round_row["n_failed"] for o in outs], "trained": [o.round_row["trained"] for o in outs]}


def main(tmp: Path) -> None:
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        multi = raysim_run(tmp / "cluster", cluster.address)
        copies = data_copies(cluster.address)
        lost = node_loss(cluster, worker)
    finally:
        cluster.shutdown()
    single = raysim_run(tmp / "single", None)
    nodes = json.loads((multi / "manifest.json").read_text())["info"]["host_nodes"]
    a, b = final(multi), final(single)
    print(json.dumps({"distinct_nodes": len(set(nodes)), "same_params": all(torch.equal(a[k], b[k]) for k in a),
                      "layouts": copies, "node_loss": lost}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
