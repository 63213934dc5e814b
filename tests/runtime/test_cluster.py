"""A run on a two-node Ray cluster uses both nodes, gives the same numbers as one node, and survives a lost node."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_node_cluster_uses_both_nodes_and_matches_one_node(tmp_path):
    script = Path(__file__).resolve().parents[1] / "two_node_run.py"
    p = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    verdict = json.loads(p.stdout.strip().splitlines()[-1])
    # the run with one host per CPU ends with the one-node numbers (the CLI on a cluster, with
    # components by import path, is tests/runtime/test_ray_start_cluster.py)
    assert verdict["same_params"] is True
    # Hosts on both nodes read the refs the driver put: one stored copy, fetched once per node;
    # the head has 2 CPUs and the worker 1: three hosts per CPU, two per node, on both nodes.
    for per, hosts in (("cpu", 3), ("node", 2)):
        layout = verdict["layouts"][per]
        assert layout == {"hosts": hosts, "host_nodes": 2, "one_copy": True}, (per, layout)
    # A node lost mid-run: its host's devices fail that round, the host comes back on the node
    # that is left, and the next round trains on both hosts again without failures.
    lost = verdict["node_loss"]
    assert lost["coordinator_beside_driver"] is True
    assert lost["host_nodes_before"] == 2 and lost["host_nodes_after"] == 1 and lost["hosts_after"] == 2, lost
    assert lost["failed"][0] > 0 and lost["failed"][1] == 0 and lost["trained"][1] > 0, lost
