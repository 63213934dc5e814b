"""The public surface, pinned: `raysim` and `raysim.api` export exactly these names, each
resolves, and the examples and studies import nothing else of raysim."""

import ast
import subprocess
import sys
from pathlib import Path

import raysim
import raysim.api

ROOT = Path(__file__).resolve().parents[1]

RAYSIM = {
    "__version__", "api", "simulate", "run", "RunResult", "ray_session", "plan_sweep", "run_sweep",
    "load_scenario", "parse_scenario", "Scenario", "ScenarioError", "load_run", "Run", "RunError", "load_runs",
    "Runs", "write_report", "time_to_target", "default_target", "rate_label", "rate_order", "rate_sizes", "rng",
}
API = {
    "simulate", "ModelFactory", "DatasetFactory", "ModelSpec", "Dataset", "Strategy", "SubmodelPlan",
    "Static", "Rolling", "Random", "Magnitude", "Full", "Assigner", "AssignRequest", "Assignment", "FitMemory",
    "FitDeadline", "FitEnergy", "Fixed", "Selector", "SelectRequest", "Uniform", "EnergyAware", "ClientAlgorithm",
    "LocalSGD", "Channel", "Payload", "Dense", "FP16", "Quantize", "TopK", "RandomK", "Sign", "FedProx", "Scaffold", "LocalData",
    "LocalResult",
    "ServerOptimizer", "ServerState", "FedAvg", "FedAvgM", "FedOpt", "FedAdam", "FedYogi", "Callback", "Stop", "TensorBoard",
    "RoundOutput", "as_scenario", "rate_sizes", "rng", "torch_generator", "channel_l1", "infer_spec", "SlicingError",
}


def test_raysim_exports_exactly_its_pinned_names_and_each_resolves():
    assert set(raysim.__all__) == RAYSIM and len(raysim.__all__) == len(RAYSIM)
    for name in raysim.__all__:
        assert getattr(raysim, name) is not None, name
    assert sorted(dir(raysim)) == sorted(RAYSIM)


def test_the_api_exports_exactly_its_pinned_names_and_each_resolves():
    assert set(raysim.api.__all__) == API and len(raysim.api.__all__) == len(API)
    for name in raysim.api.__all__:
        assert getattr(raysim.api, name) is not None, name


def test_the_surfaces_agree_where_they_share_a_name():
    for name in RAYSIM & API:
        assert getattr(raysim, name) is getattr(raysim.api, name), name


def test_an_unknown_name_is_an_attribute_error():
    try:
        raysim.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("raysim.no_such_name resolved")


def test_importing_raysim_imports_neither_torch_nor_ray():
    code = "import sys, raysim; raysim.__version__; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def raysim_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("raysim"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raysim"):
            out.add(node.module)
    return out


def test_examples_and_studies_import_only_the_public_surface():
    files = sorted((ROOT / "examples").glob("*.py")) + sorted((ROOT / "analysis").glob("*.py"))
    assert files
    bad = {f.name: sorted(m for m in raysim_imports(f) if m not in ("raysim", "raysim.api")) for f in files}
    assert not {k: v for k, v in bad.items() if v}
