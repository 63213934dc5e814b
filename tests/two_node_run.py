"""Run a tiny scenario on a two-node local Ray cluster and in-process on one machine; print a JSON verdict.

Started as a subprocess by test_cluster.py so that the cluster's processes and the test
process's own Ray instance never mix.
"""

import json
import sys
from pathlib import Path

import ray
import torch
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).parent))
from helpers import coordinator, tiny_overrides  # noqa: E402

from raysim.scenario.schema import load_scenario  # noqa: E402


def one_node(sc) -> dict:
    """The cluster run's scenario in this process, on one machine (the engine without Ray, which
    gives a Ray run's numbers): its final weights."""
    from raysim.inprocess import local_simulation  # noqa: PLC0415

    sim = local_simulation(sc, hosts=2)
    while sim.round < sim.cfg.rounds:
        sim.step()
    return sim.params


def copies_and_node_loss(cluster: Cluster, worker) -> tuple[dict, dict, bool]:
    """Which stored copy of the training data the coordinator and each host (on which node) read,
    with one host per CPU (whose run, to its end, must give the one-node numbers) and with one
    host per node; then, on the per-node coordinator, the worker node is removed after round 1:
    statuses of rounds 2 and 3."""
    copies = {}
    same = False
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        for per in ("cpu", "node"):
            sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"runtime.hosts_per": per, "rounds": 3}))
            coord = coordinator(sc)
            refs, nodes = ray.get([coord.data_ref_ids.remote(), coord.host_nodes.remote()])
            copies[per] = {"hosts": len(nodes), "host_nodes": len(set(nodes)),
                           "one_copy": all(h == refs["coordinator"] for h in refs["hosts"])}
            if per == "cpu":
                for _ in range(sc.rounds):
                    ray.get(coord.step.remote())
                got = ray.get(coord.state_dict.remote())["params"]
                ray.kill(coord)
                want = one_node(sc)
                same = all(torch.equal(got[k], want[k]) for k in want)
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
    return copies, lost, same


def main(tmp: Path) -> None:
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        copies, lost, same = copies_and_node_loss(cluster, worker)
    finally:
        cluster.shutdown()
    print(json.dumps({"same_params": same, "layouts": copies, "node_loss": lost}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
