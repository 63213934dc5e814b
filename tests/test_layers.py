"""The layering as a specification: every import (function-level and TYPE_CHECKING ones
included) runs down the layers or stays in its own package; there are no import cycles."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "raysim"

# Lowest first. A module may import from its own package, or from a package on a lower layer.
LAYERS = [
    # the shared vocabulary: errors, random streams, records (rows), messages (tasks, reports,
    # partial sums), the base of settings sections
    ("raysim.version", "raysim.errors", "raysim.seeding", "raysim.records", "raysim.messages", "raysim.settings"),
    ("raysim.models.base", "raysim.models.span"),           # what a width family is
    ("raysim.slicing",),                                   # any module -> a width family
    ("raysim.models", "raysim.submodel", "raysim.data", "raysim.fleet", "raysim.channels"),
    ("raysim.client", "raysim.server"),                    # a device's work; from updates to the global model
    ("raysim.hosts",),                                     # pure-torch workers that train devices
    ("raysim.engine",),                                    # the round loops (take objects)
    ("raysim.scenario",),                                  # names -> objects, the builder
    ("raysim.rundir",),
    ("raysim.report",),
    ("raysim.runtime",),                                   # Ray
    ("raysim.api", "raysim.sweep", "raysim.inprocess"),    # the entry points
    ("raysim.cli",),
    ("raysim.__main__",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every module a file imports, resolved to a raysim module where it names one."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from raysim.x import y`: y may itself be a module
            out.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                       for a in node.names)
    return out


GRAPH = {m: {i for i in imports(p) if i.startswith("raysim")} - {m} for m, p in MODULES.items()}
ALL_IMPORTS = {m: imports(p) for m, p in MODULES.items()}


def layer(name: str) -> tuple[int, str]:
    """(layer, the package prefix that placed it): the most specific prefix wins."""
    best = None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    assert best is not None, f"{name} is on no layer: add its package to LAYERS"
    return best


def package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_every_module_sits_on_a_layer():
    for m in MODULES:
        if m != "raysim":
            layer(m)


def test_no_import_runs_up_a_layer_or_sideways_into_another_package():
    bad = []
    for m, imps in GRAPH.items():
        if m == "raysim":
            continue
        lm, _ = layer(m)
        for i in imps:
            li, _ = layer(i)
            if li > lm or (li == lm and package(i) != package(m) and lm > 0):
                bad.append(f"{m} -> {i}")
    assert not bad, bad


def test_there_are_no_import_cycles():
    # Tarjan's strongly connected components over the module graph
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not sccs


def test_nothing_inside_the_package_imports_its_public_surface():
    # raysim/__init__ resolves names lazily from the modules below it; a module importing
    # `raysim` itself would close a loop through it.
    users = sorted(m for m, imps in GRAPH.items() if "raysim" in imps and m != "raysim")
    assert not users, users


def test_ray_is_imported_only_under_runtime():
    users = sorted(m for m, imps in ALL_IMPORTS.items() if any(i == "ray" or i.startswith("ray.") for i in imps))
    assert users and all(m.startswith("raysim.runtime") for m in users), users


def test_the_engine_and_below_take_objects_and_never_read_a_scenario():
    below = [m for m in GRAPH if m != "raysim" and layer(m)[0] <= layer("raysim.engine")[0]]
    readers = sorted(m for m in below if any(i.startswith("raysim.scenario") for i in GRAPH[m]))
    assert not readers, readers


def test_reading_results_needs_neither_torch_nor_ray_at_import():
    for m, p in MODULES.items():
        if not (m.startswith("raysim.report") or m == "raysim.rundir.reader"):
            continue
        top = ast.parse(p.read_text()).body  # module-level imports only: checkpoints load torch lazily
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not {n for n in names if n.split(".")[0] in ("torch", "ray")}, m
