"""The layering as a specification: no import runs back up the layers (lazy imports included)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "raysim"

# The edge (names to objects, entry points) and the Ray runtime sit above everything else.
EDGE = ("raysim.build", "raysim.registry", "raysim.api", "raysim.cli", "raysim.sweep", "raysim.fleet_view")
ENGINE = ("raysim.simulation", "raysim.trainer", "raysim.client", "raysim.server", "raysim.policy", "raysim.clock",
          "raysim.aggregate", "raysim.schedule", "raysim.cost", "raysim.submodel", "raysim.models", "raysim.data",
          "raysim.fleet", "raysim.slicing", "raysim.seeding", "raysim.train")
READING = ("raysim.results", "raysim.tables", "raysim.report", "raysim.summaries", "raysim.figures")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODULES = {module_name(p): imports(p) for p in PKG.rglob("*.py")}


def test_records_import_nothing_of_raysim():
    assert not [m for m in MODULES["raysim.records"] if m.startswith("raysim")]


def test_the_engine_never_imports_the_edge_or_the_runtime():
    bad = {m: sorted(i for i in imps if under(i, EDGE) or under(i, ("raysim.runtime", "ray")))
           for m, imps in MODULES.items() if under(m, ENGINE)}
    assert not {m: v for m, v in bad.items() if v}


def test_reading_results_needs_neither_the_engine_nor_the_runtime():
    bad = {m: sorted(i for i in imps if under(i, ENGINE + EDGE + ("raysim.runtime", "torch", "ray"))
                     and i != "raysim.seeding")
           for m, imps in MODULES.items() if under(m, READING)}
    # results writes checkpoints with torch, imported lazily inside the writer only
    bad["raysim.results"] = [i for i in bad.get("raysim.results", []) if i != "torch"]
    assert not {m: v for m, v in bad.items() if v}


def test_ray_is_imported_only_under_runtime():
    users = sorted(m for m, imps in MODULES.items() if under("ray", imps) or any(under(i, ("ray",)) for i in imps))
    assert all(m.startswith("raysim.runtime") for m in users), users
