"""A corpus of bad inputs: each is one line on stderr, the right exit code, no traceback, and
leaves every file as it was (no run directory appears, none changes).

Every case fails before Ray starts, so the CLI runs in-process (`raysim.cli.main`); a few run
as real subprocesses to show that nothing reaches the terminal but the one line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from helpers import tiny_overrides

from raysim.cli import main
from raysim.scenario.schema import load_scenario

QUICK = "scenarios/quickstart.yaml"
TINY = [a for o in tiny_overrides() for a in ("--set", o)]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def complete_run(tmp_path_factory) -> Path:
    """A real, complete tiny run directory, made in-process without Ray."""
    from raysim.inprocess import local_simulation
    from raysim.rundir.writer import RunWriter

    sc = load_scenario(QUICK, tiny_overrides(rounds=2))
    sim = local_simulation(sc)
    setup = sim.setup
    path = tmp_path_factory.mktemp("runs") / "tiny-20260101-000000"
    path.mkdir()
    w = RunWriter(path, sc, {"hosts": 1})
    w.write_fleet(setup.fleet.to_frame())
    for _ in range(sc.rounds):
        w.add(sim.step())
        w.checkpoint(sim.state_dict())
    w.finish("complete", wall_s=1.0)
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and directory below `root` with its content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def idx(magic_dims: tuple[int, ...], payload: bytes, ndim: int) -> bytes:
    return struct.pack(">i", 0x0800 | ndim) + struct.pack(f">{ndim}I", *magic_dims) + payload


def mnist_files(root: Path, n_train: int = 2, n_test: int = 1) -> Path:
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write(root / f"{prefix}-images-idx3-ubyte", idx((n, 28, 28), bytes(n * 784), 3))
        write(root / f"{prefix}-labels-idx1-ubyte", idx((n,), bytes(n), 1))
    return root


def leaf_file(x_row: list) -> str:
    return json.dumps({"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": [x_row], "y": [1]}}})


def femnist(root: Path, train: str | bytes) -> Path:
    write(root / "train" / "a.json", train)
    write(root / "test" / "a.json", leaf_file([0.0] * 784))
    return root


def run_args(t: Path, scenario: str, *extra: str) -> list[str]:
    return ["run", scenario, *TINY, *extra, "--out", str(t / "out"), "--quiet", "--no-report"]


def file_args(t: Path, scenario: str) -> list[str]:
    return ["run", scenario, "--out", str(t / "out"), "--quiet", "--no-report"]


def scenario_file(t: Path, text: str | bytes, name: str = "s.yaml") -> str:
    return str(write(t / name, text))


def with_data(t: Path, dataset: str, root: Path) -> list[str]:
    return run_args(t, QUICK, "--set", f"data.dataset={dataset}", "--set", f"data.root={root}")


def edit_manifest(run: Path, **fields) -> None:
    m = json.loads((run / "manifest.json").read_text())
    for k, v in fields.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    (run / "manifest.json").write_text(json.dumps(m))


def interrupted(run: Path, keep_hash: bool = True) -> Path:
    edit_manifest(run, status="interrupted", completed_rounds=1, **({} if keep_hash else {"scenario_sha256": None}))
    return run


def truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def ckpt(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("round-*.pt"))[-1]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------- the corpus
@dataclass
class Case:
    """`build(tmp, run)` writes the inputs (`run` is a private copy of a complete run) and
    returns the argv; the command must exit with `code` and name `needle`."""

    id: str
    build: Callable[[Path, Path], list[str]]
    needle: str
    code: int = 2
    subprocess: bool = False
    marks: list = field(default_factory=list)


DEEP_YAML = "name: x\nrounds: " + "[" * 200 + "]" * 200 + "\n"
BOMB = "name: x\nq: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"q{i}: &a{i} [{','.join(['*a' if i == 0 else f'*a{i - 1}'] * 10)}]\n" for i in range(6))

CASES = [
    # scenario files
    Case("scenario-binary", lambda t, r: file_args(t, scenario_file(t, b"\x7fELF\x02\x01\x00\x00garbage")), "not a text file"),
    Case("scenario-latin1", lambda t, r: file_args(t, scenario_file(t, "name: caf\xe9\n".encode("latin-1"))), "not UTF-8"),
    Case("scenario-deep-yaml", lambda t, r: file_args(t, scenario_file(t, DEEP_YAML)), "nested more than"),
    Case("scenario-deep-json", lambda t, r: file_args(t, scenario_file(t, '{"a": ' + "[" * 5000 + "]" * 5000 + "}",
                                                                      "s.json")), "nested more than"),
    Case("scenario-alias-bomb", lambda t, r: file_args(t, scenario_file(t, BOMB)), "expands to more than"),
    Case("scenario-recursive-alias", lambda t, r: file_args(t, scenario_file(t, "name: x\na: &a [*a]\n")), "recursive"),
    Case("scenario-duplicate-key", lambda t, r: file_args(t, scenario_file(t, "rounds: 3\nseed: 1\nrounds: 4\n")),
         "line 3, column 1: key 'rounds' given twice"),
    Case("scenario-duplicate-nested-key", lambda t, r: file_args(t, scenario_file(t, "train:\n  lr: 0.1\n  lr: 1\n")),
         "key 'lr' given twice"),
    Case("scenario-empty", lambda t, r: file_args(t, scenario_file(t, "# nothing here\n")), "empty scenario file"),
    Case("scenario-a-list", lambda t, r: file_args(t, scenario_file(t, "- name: x\n")), "top level must be a mapping"),
    Case("scenario-infinite-lr", lambda t, r: file_args(t, scenario_file(t, "train: {lr: .inf}\n")), "train.lr"),
    Case("scenario-nan-share", lambda t, r: file_args(t, scenario_file(t, "fleet: {mix: {mcu: .nan, rpi4: 1}}\n")),
         "fleet.mix.mcu"),
    Case("scenario-infinite-noise", lambda t, r: file_args(t, scenario_file(t, "data: {synthetic: {noise: .inf}}\n")),
         "data.synthetic.noise"),
    Case("scenario-bool-count", lambda t, r: file_args(t, scenario_file(t, "fleet: {devices: true}\n")),
         "fleet.devices: Input should be a valid integer (got True)"),
    Case("scenario-bool-rounds", lambda t, r: file_args(t, scenario_file(t, "rounds: yes\n")), "rounds"),
    Case("scenario-name-escapes", lambda t, r: file_args(t, scenario_file(t, "name: ../../escaped\n")), "name:"),
    Case("scenario-name-absolute", lambda t, r: file_args(t, scenario_file(t, "name: /tmp/elsewhere\n")), "name:"),
    Case("scenario-is-a-directory", lambda t, r: file_args(t, str(t)), "is a directory"),
    Case("scenario-too-large", lambda t, r: file_args(t, scenario_file(t, "#" * (2 << 20))), "too large"),
    Case("scenario-missing", lambda t, r: file_args(t, str(t / "nope.yaml")), "no such scenario file"),
    # --set overrides
    Case("set-infinite-lr", lambda t, r: run_args(t, QUICK, "--set", "train.lr=.inf"), "train.lr"),
    Case("set-negative-infinite-overcommit", lambda t, r: run_args(t, QUICK, "--set", "selection.overcommit=-.inf"),
         "selection.overcommit"),
    Case("set-bool-count", lambda t, r: run_args(t, QUICK, "--set", "selection.per_round=false"), "selection.per_round"),
    Case("set-async-dedicated", lambda t, r: run_args(t, QUICK, "--set", "server.mode=fedbuff", "--set",
                                                     "runtime.placement=dedicated"), "server.mode"),
    Case("set-async-concurrency-beyond-fleet", lambda t, r: run_args(t, QUICK, "--set", "server.mode=fedbuff",
                                                                    "--set", "server.concurrency=5000"),
         "server.concurrency"),
    Case("set-async-staleness-kind", lambda t, r: run_args(t, QUICK, "--set", "server.mode=fedasync", "--set",
                                                          "server.staleness.kind=exp"), "server.staleness.kind"),
    Case("set-duplicate-key", lambda t, r: run_args(t, QUICK, "--set", "fleet.mix={mcu: 1, mcu: 2}"), "given twice"),
    Case("set-name-traversal", lambda t, r: run_args(t, QUICK, "--set", "name=a/../../b"), "name:"),
    Case("set-absurd-fleet", lambda t, r: run_args(t, QUICK, "--set", "fleet.devices=1000000000000",
                                                   "--set", "selection.per_round=8"), "fleet.devices"),
    Case("set-absurd-samples", lambda t, r: run_args(t, QUICK, "--set", "data.synthetic.samples=100000000000"),
         "data.synthetic.samples"),
    Case("set-absurd-model", lambda t, r: run_args(t, QUICK, "--set", "model.widths=[1000000,1000000]"),
         "model.widths"),
    Case("set-no-value", lambda t, r: run_args(t, QUICK, "--set", "rounds"), "KEY=VALUE"),
    Case("set-batched-unknown", lambda t, r: run_args(t, QUICK, "--set", "train.batched=sometimes"), "train.batched"),
    Case("set-device-unknown", lambda t, r: run_args(t, QUICK, "--set", "runtime.device=tpu"), "runtime.device"),
    Case("set-gpu-share-zero", lambda t, r: run_args(t, QUICK, "--set", "runtime.gpus_per_host=0"),
         "runtime.gpus_per_host"),
    Case("set-cuda-dedicated", lambda t, r: run_args(t, QUICK, "--set", "runtime.device=cuda", "--set",
                                                     "runtime.placement=dedicated"), "needs runtime.placement 'pooled'"),
    Case("set-cuda-without-gpu", lambda t, r: run_args(t, QUICK, "--set", "runtime.device=cuda"), "has no CUDA GPU",
         marks=[pytest.mark.skipif(_has_cuda(), reason="this machine has a CUDA GPU")]),
    Case("set-topology-unknown-gateway-class", lambda t, r: run_args(t, QUICK, "--set", "topology.gateways=3", "--set",
                                                                     "topology.gateway_class=router"),
         "topology.gateway_class: 'router' is not a device class"),
    Case("set-scaffold-fedbuff", lambda t, r: run_args(t, QUICK, "--set", "train.algorithm=scaffold", "--set",
                                                       "server.mode=fedbuff", "--set", "deadline.seconds=null"),
         "train.algorithm: Scaffold keeps state across rounds"),
    Case("fleet-command-absurd-fleet", lambda t, r: ["fleet", QUICK, "--set", "fleet.devices=1000000000000"],
         "fleet.devices"),
    # the output directory
    Case("out-is-a-file", lambda t, r: ["run", QUICK, *TINY, "--out", str(write(t / "f", "x")), "--quiet"],
         "is a file", subprocess=True),
    Case("out-under-a-file", lambda t, r: ["run", QUICK, *TINY, "--out", str(write(t / "f", "x") / "sub")],
         "lies under"),
    # fleet and availability traces
    Case("trace-binary-csv", lambda t, r: run_args(t, QUICK, "--set", f"fleet.trace={write(t / 'd.csv', bytes(range(256)))}"),
         "d.csv"),
    Case("trace-corrupt-parquet", lambda t, r: run_args(t, QUICK, "--set",
                                                        f"fleet.trace={write(t / 'd.parquet', b'PAR1' + bytes(100))}"),
         "not a readable parquet file"),
    Case("trace-infinite-flops", lambda t, r: run_args(t, QUICK, "--set", "selection.per_round=1", "--set", "fleet.trace=" + str(
        write(t / "d.csv", "device_id,flops,memory_bytes,down_kbps,up_kbps\n0,inf,1000000,100,100\n"))),
         "line 2, column 2 (flops)"),
    Case("availability-end-before-start", lambda t, r: run_args(
        t, QUICK, "--set", "fleet.availability.kind=trace", "--set", "fleet.availability.trace=" + str(
            write(t / "a.csv", "device_id,start_s,end_s\n0,10,5\n"))), "end_s"),
    # every dataset format
    Case("mnist-bad-deflate", lambda t, r: with_data(t, "mnist", _bad_deflate(mnist_files(t / "mnist"))),
         "cannot read"),
    Case("mnist-zero-training-samples", lambda t, r: with_data(t, "mnist", mnist_files(t / "mnist", n_train=0)),
         "train-images-idx3-ubyte: holds no images"),
    Case("mnist-truncated", lambda t, r: with_data(t, "mnist", _truncated_idx(mnist_files(t / "mnist"))),
         "truncated IDX file"),
    Case("mnist-absurd-header", lambda t, r: with_data(t, "mnist", _absurd_idx(mnist_files(t / "mnist"))),
         "needs"),
    Case("fashion-mnist-missing-file", lambda t, r: with_data(t, "fashion-mnist", _drop(mnist_files(t / "fm"))),
         "not found"),
    Case("cifar-corrupt-pickle", lambda t, r: with_data(t, "cifar10", _cifar(t / "cifar", b"\x80\x04garbage")),
         "not a CIFAR-10 python batch"),
    Case("cifar-evil-pickle", lambda t, r: with_data(t, "cifar10", _cifar(t / "cifar", pickle.dumps(print))),
         "not allowed"),
    Case("femnist-nan-pixels", lambda t, r: with_data(t, "femnist", femnist(t / "fem", leaf_file([float("nan")] * 784))),
         "non-finite"),
    Case("femnist-deep-json", lambda t, r: with_data(t, "femnist", femnist(t / "fem", "[" * 100000 + "]" * 100000)),
         "a.json"),
    Case("femnist-binary", lambda t, r: with_data(t, "femnist", femnist(t / "fem", b"\xff\xfe\x00\x01")),
         "not valid JSON"),
    # run directories and resume
    Case("resume-complete", lambda t, r: ["run", "--resume", str(r), "--quiet"], "the run is complete", subprocess=True),
    Case("resume-complete-with-set", lambda t, r: ["run", "--resume", str(r), "--set", "rounds=5"], "the run is complete"),
    Case("resume-override-changes-run", lambda t, r: ["run", "--resume", str(interrupted(r)), "--set", "train.lr=0.2"],
         "--set train.lr would change the run"),
    Case("resume-edited-scenario", lambda t, r: ["run", "--resume", str(_edit_widths(interrupted(r)))],
         "scenario.yaml was changed"),
    Case("resume-model-mismatch", lambda t, r: ["run", "--resume", str(_edit_widths(interrupted(r, keep_hash=False)))],
         "does not match the scenario's model"),
    Case("resume-corrupt-checkpoint", lambda t, r: ["run", "--resume", str(_corrupt(ckpt(interrupted(r))))],
         "unreadable checkpoint"),
    Case("resume-corrupt-manifest", lambda t, r: ["run", "--resume", str(_corrupt(r / "manifest.json"))],
         "corrupt manifest"),
    Case("resume-truncated-parquet", lambda t, r: ["run", "--resume", str(_corrupt(interrupted(r) / "rounds.parquet"))],
         "rounds.parquet: corrupt or truncated table"),
    Case("resume-not-a-run", lambda t, r: ["run", "--resume", str(t)], "not a run directory"),
    Case("resume-and-scenario", lambda t, r: ["run", QUICK, "--resume", str(r)], "not both"),
    # report
    Case("report-corrupt-manifest", lambda t, r: ["report", str(_corrupt(r / "manifest.json")), "--out", str(t / "rep")],
         "corrupt manifest", subprocess=True),
    Case("report-truncated-parquet", lambda t, r: ["report", str(_corrupt(r / "clients.parquet")), "--out", str(t / "rep")],
         "no complete runs"),
    Case("report-corrupt-scenario", lambda t, r: ["report", str(_corrupt_yaml(r)), "--out", str(t / "rep")],
         "no complete runs"),
    Case("report-bad-target", lambda t, r: ["report", str(r), "--target", "500"], "--target 500"),
    Case("report-nothing-there", lambda t, r: ["report", str(t / "none*")], "no run directories match"),
    # sweep
    Case("sweep-infinite-value", lambda t, r: ["sweep", QUICK, *TINY, "--grid", "train.lr=0.1,.inf", "--out", str(t / "o")],
         "train.lr"),
    Case("sweep-duplicate-key-scenario", lambda t, r: ["sweep", scenario_file(t, "seed: 1\nseed: 2\n"), "--grid", "seed=1,2"],
         "given twice"),
    Case("sweep-out-is-a-file", lambda t, r: ["sweep", QUICK, *TINY, "--grid", "seed=1,2", "--out", str(write(t / "f", "x")),
                                              "--no-report"], "is a file"),
]


def _bad_deflate(root: Path) -> Path:
    """A gzip member with a valid header and a corrupt deflate stream (not merely truncated)."""
    good = gzip.compress((root / "train-images-idx3-ubyte").read_bytes())
    bad = good[:10] + bytes([0xFF] * 16) + good[26:]
    (root / "train-images-idx3-ubyte").unlink()
    write(root / "train-images-idx3-ubyte.gz", bad)
    return root


def _truncated_idx(root: Path) -> Path:
    truncate(root / "train-images-idx3-ubyte", 100)
    return root


def _absurd_idx(root: Path) -> Path:
    write(root / "train-images-idx3-ubyte", idx((4_000_000_000, 4_000_000_000, 4_000_000_000), bytes(10), 3))
    return root


def _drop(root: Path) -> Path:
    (root / "t10k-labels-idx1-ubyte").unlink()
    return root


def _cifar(root: Path, blob: bytes) -> Path:
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write(root / n, blob)
    return root


def _edit_widths(run: Path) -> Path:
    p = run / "scenario.yaml"
    p.write_text(p.read_text().replace("- 8\n  - 16\n", "- 8\n  - 24\n", 1))
    assert "- 24" in p.read_text()
    return run


def _corrupt(path: Path) -> Path:
    truncate(path, max(1, path.stat().st_size // 3))
    return path.parent if path.name == "manifest.json" or path.suffix == ".parquet" else path.parents[1]


def _corrupt_yaml(run: Path) -> Path:
    write(run / "scenario.yaml", "name: x\nname: y\n")
    return run


@pytest.mark.parametrize("case", [pytest.param(c, marks=c.marks, id=c.id) for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, complete_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAYSIM_LOG_DIR", str(tmp_path / "logs"))
    run = tmp_path / "run"
    shutil.copytree(complete_run, run)
    args = case.build(tmp_path, run)
    before = tree_digest(tmp_path)

    def no_ray(*args, **kwargs):
        raise AssertionError("bad input must be refused before Ray starts")

    # The runner first: importing it after the session's patch would bind the stub into it for
    # good (monkeypatch would then "restore" the stub), and break later tests in this process.
    monkeypatch.setattr("raysim.runtime.runner.start_ray", no_ray)
    monkeypatch.setattr("raysim.runtime.session.start_ray", no_ray)
    if case.subprocess:
        p = subprocess.run([sys.executable, "-m", "raysim", *args], capture_output=True, text=True, timeout=120)
        code, err = p.returncode, p.stderr
    else:
        capsys.readouterr()
        code = main(args)
        err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == case.code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("raysim: error: ") and case.needle in lines[0], lines[0]
    assert "Traceback" not in err and "unexpected failure" not in err
    assert tree_digest(tmp_path) == before, "a refused command changed files"


def test_the_corpus_is_large_and_covers_every_kind():
    assert len(CASES) >= 40
    kinds = {c.id.split("-")[0] for c in CASES}
    assert {"scenario", "set", "out", "trace", "availability", "mnist", "cifar", "femnist", "resume", "report",
            "sweep"} <= kinds


def test_load_runs_refuses_corrupt_runs_in_one_line(complete_run, tmp_path):
    from raysim import RunError, load_run, load_runs

    run = tmp_path / "run"
    shutil.copytree(complete_run, run)
    assert len(load_run(run).rounds) == 2  # the pristine copy reads
    _corrupt(run / "evals.parquet")
    before = tree_digest(tmp_path)
    with pytest.raises(RunError) as err:
        load_run(run)
    assert "evals.parquet: corrupt or truncated table" in str(err.value) and "\n" not in str(err.value)
    with pytest.warns(UserWarning, match="evals.parquet"), pytest.raises(RunError, match="no complete runs"):
        load_runs([run])
    _corrupt(run / "manifest.json")
    with pytest.raises(RunError, match="corrupt manifest"):
        load_run(run, allow_incomplete=True)
    assert {k for k in tree_digest(tmp_path)} == set(before)
