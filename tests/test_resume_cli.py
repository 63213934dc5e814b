"""An interrupted driver resumes from its last checkpoint to bit-identical final numbers."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import tiny_overrides

SETS = [a for o in tiny_overrides(**{"rounds": 6, "output.checkpoint_every": 2}) for a in ("--set", o)]


def cli(*args):
    return [sys.executable, "-m", "raysim", "run", *args, "--quiet", "--no-report"]


def final_params(run: Path):
    ck = sorted((run / "checkpoints").glob("round-*.pt"))[-1]
    return torch.load(ck, weights_only=True)["params"]


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_numbers(tmp_path):
    subprocess.run(cli("scenarios/quickstart.yaml", *SETS, "--out", str(tmp_path / "full")), check=True,
                   capture_output=True, timeout=300)
    full = next((tmp_path / "full").iterdir())

    p = subprocess.Popen(cli("scenarios/quickstart.yaml", *SETS, "--out", str(tmp_path / "cut")),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    cut = None
    while time.time() < deadline:
        runs = list((tmp_path / "cut").glob("*/checkpoints/round-000002.pt"))
        if runs:
            cut = runs[0].parents[1]
            break
        time.sleep(0.2)
    assert cut is not None, "no checkpoint appeared"
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    assert p.returncode != 0
    assert "Traceback" not in err
    manifest = json.loads((cut / "manifest.json").read_text())
    assert manifest["status"] in ("interrupted", "running") and manifest["completed_rounds"] < 6

    r = subprocess.run(cli("--resume", str(cut)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((cut / "manifest.json").read_text())["status"] == "complete"
    a, b = final_params(full), final_params(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
