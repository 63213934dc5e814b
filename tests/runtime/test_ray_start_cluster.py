"""The README's cluster recipe, for real: `ray start` a head and a worker node (loopback, two
ports, token authentication as `ray start --head` turns it on), run raysim through `--address`,
and stop exactly the processes those `ray start`s began."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import tiny_overrides
from ray_start import free_port, start_cluster, token_env

SETS = [a for o in tiny_overrides(rounds=2) for a in ("--set", o)]  # runtime.num_cpus only sizes a local instance


def raysim_run(out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysim", "run", "scenarios/quickstart.yaml", *SETS, "--out", str(out),
                           "--quiet", "--no-report", *extra], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ray_start_cluster_runs_a_scenario_on_both_nodes(tmp_path):
    # A home that holds a Ray token, as on any machine where Ray has run: `ray start --head`
    # then enables token authentication. The driver gets no RAY_AUTH_MODE: raysim must cope.
    env = token_env(tmp_path / "home")
    address, nodes = start_cluster(tmp_path, env)
    try:
        assert "Token authentication is enabled" in (tmp_path / "head.log").read_text()
        p = raysim_run(tmp_path / "cluster", env, "--address", address)
        assert p.returncode == 0, p.stderr[-3000:]
        run = next((tmp_path / "cluster").iterdir())
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert len(set(manifest["info"]["host_nodes"])) == 2, "device hosts on both nodes"

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
