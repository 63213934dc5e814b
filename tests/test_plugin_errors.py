"""A plug-in that breaks its contract is one line naming it: its role and `module:QualName`,
what it returned or raised and what was expected, exit code 2, and no "please report it"
(that is for raysim's own bugs).

Each scratch plug-in is written to a module of its own in a temporary directory and named by
import path, `module:attr`, as a researcher would; a few are given to `raysim.simulate` as
objects. Components built while a scenario is resolved (model, dataset, client algorithm,
server optimizer) fail before Ray starts (`raysim fleet` builds them); a strategy runs in the
coordinator and a channel on a device host, both Ray actors, so those run for real.
"""

from __future__ import annotations

import itertools
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import tiny_overrides

from raysim.cli import main
from raysim.errors import EXIT_BAD_INPUT, PluginError, describe, guard

QUICK = "scenarios/quickstart.yaml"
_count = itertools.count()


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """`scratch(code)`: the name of a new module holding `code`, importable from here on."""
    names = []

    def make(code: str) -> str:
        name = f"scratch_plugin_{next(_count)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
        names.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for name in names:
        sys.modules.pop(name, None)


def one_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "report it" not in err and "unexpected failure" not in err, err
    return lines[0]


def cli(command: str, *sets: str, out: str = "", **extra) -> int:
    args = [a for s in [*tiny_overrides(**extra), *sets] for a in ("--set", s)]
    if command == "run":
        return main(["run", QUICK, *args, "--quiet", "--no-report", "--out", out])
    return main([command, QUICK, *args])


def no_ray(monkeypatch) -> None:
    """Starting Ray fails the test: what is refused here is refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("a broken component must be refused before Ray starts")

    # The runner first: imported after the session's patch, it would keep the stub for good.
    monkeypatch.setattr("raysim.runtime.runner.start_ray", refuse)
    monkeypatch.setattr("raysim.runtime.session.start_ray", refuse)


# ---------------------------------------------------------------------------- built while resolving
RESOLVED = {
    "model-raises": ("model.arch", "net", """
        def net(input_shape, num_classes):
            raise RuntimeError("weights file /models/net.pt not found")
        """, "raised RuntimeError: weights file /models/net.pt not found when called with ((1, 12, 12), 10); "
             "expected a torch.nn.Module or a raysim ModelSpec"),
    "model-wrong-type": ("model.arch", "net", """
        import torch
        def net(input_shape, num_classes):
            return {"w": torch.zeros(3)}
        """, "returned a dict when called with ((1, 12, 12), 10); expected a torch.nn.Module or a raysim ModelSpec"),
    "dataset-raises": ("data.dataset", "load", """
        def load(seed):
            return open("/no/such/dir/train.npz").read()
        """, "raised FileNotFoundError: [Errno 2] No such file or directory: '/no/such/dir/train.npz' when called "
             "with seed 0; expected a Dataset or a tuple (x_train, y_train, x_test, y_test[, groups]) of numpy arrays"),
    "dataset-wrong-type": ("data.dataset", "load", """
        import numpy as np
        def load(seed):
            x = np.zeros((100, 4), np.float32)
            return x, np.arange(100) % 2
        """, "returned a tuple of 2 (ndarray, ndarray); expected a Dataset or a tuple (x_train, y_train, x_test, "
             "y_test[, groups]) of numpy arrays"),
    "client-raises-when-built": ("train.algorithm", "Clipped", """
        from pydantic import BaseModel
        from raysim.api import LocalSGD
        class Clipped(LocalSGD):
            class Params(BaseModel):
                lr: float = 0.05
                clip: float = 0.0
            def __init__(self, lr: float = 0.05, clip: float = 0.0):
                if clip <= 0:
                    raise ValueError("clip must be positive")
                super().__init__(lr=lr)
        """, "raised ValueError: clip must be positive when built as Clipped(lr=0.05, clip=0.0); expected an "
             "instance built from the parameters it declares"),
    "server-raises-when-built": ("server.optimizer", "Decaying", """
        from raysim.api import FedAvg
        class Decaying(FedAvg):
            def __init__(self, lr: float = 1.0):
                super().__init__(lr=lr)
                self.schedule = [lr * 0.9 ** k for k in range(10)][20]
        """, "raised IndexError: list index out of range when built as Decaying(lr=1.0); expected an instance built "
             "from the parameters it declares"),
}


@pytest.mark.parametrize("case", sorted(RESOLVED))
def test_a_component_that_breaks_while_it_is_built_is_one_line_naming_it(case, scratch, capsys, monkeypatch):
    key, attr, code, says = RESOLVED[case]
    mod = scratch(code)

    no_ray(monkeypatch)
    line = one_line(capsys, cli("fleet", f"{key}={mod}:{attr}"))
    assert line == f"raysim: error: {key} {mod}:{attr} {says}"


def test_a_broken_component_given_as_an_object_is_named_by_its_function(tmp_path, monkeypatch):
    # The factory's own name, not functools.partial's: a factory with bound parameters.
    import functools

    from raysim.api import simulate

    no_ray(monkeypatch)

    def factory(input_shape, num_classes, width=4):
        return [width]

    with pytest.raises(PluginError) as err:
        simulate(tiny_overrides_dict(), model=functools.partial(factory, width=8), out=tmp_path)
    assert str(err.value).startswith(f"model.arch {__name__}:test_a_broken_component_given_as_an_object_is_named_by_"
                                     f"its_function.<locals>.factory returned a list when called with")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def tiny_overrides_dict() -> dict:
    out: dict = {}
    for item in tiny_overrides():
        key, value = item.split("=", 1)
        node = out
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = [8, 16] if value == "[8,16]" else (int(value) if value.isdigit() else value)
    return out


# ---------------------------------------------------------------------------- run in Ray actors
BEYOND = """
    import numpy as np
    from raysim.api import Strategy, SubmodelPlan, rate_sizes
    class Beyond(Strategy):
        '''Keeps the last channels, off by one: the last index is the width itself.'''
        def plan(self, spec, rate, round_idx, device_id, global_params, seed):
            return SubmodelPlan(rate, {g: np.arange(w - rate_sizes(w, rate) + 1, w + 1)
                                       for g, w in spec.groups.items()})
    """
HALF = """
    import numpy as np
    from raysim.api import Strategy, SubmodelPlan, rate_sizes
    class Half(Strategy):
        '''Keeps half of what the rate asks for.'''
        def plan(self, spec, rate, round_idx, device_id, global_params, seed):
            return SubmodelPlan(rate, {g: np.arange(max(1, rate_sizes(w, rate) // 2)) for g, w in spec.groups.items()})
    """
FLATTENING = """
    from raysim.api import FP16
    class Flattening(FP16):
        '''fp16 on the wire, but the tensor comes back flat.'''
        def decode_tensor(self, parts, shape):
            return super().decode_tensor(parts, shape).flatten()
    """
# One of each actor (the wrong count and the downlink are checked the same way, below and in
# the Python API's test; each run here costs Ray tens of seconds on a small machine).
ACTOR_CASES = {
    # a strategy, in the coordinator: every device trains at 0.5 so the plan has a rate to miss
    "strategy-beyond-width": (BEYOND, "Beyond", "compression.strategy",
                              "plan(rate 0.5) returned a plan that keeps index 8 of group 'conv0', outside the "
                              "global width [0, 8); expected rate_sizes(width, 0.5) sorted, unique indices"),
    # a channel, on a device host: the coordinator passes the host's error on, wrapped twice
    "channel-up-changes-a-shape": (FLATTENING, "Flattening", "channel.up",
                                   "decode() returned 'features.0.weight' of shape (36,); expected (4, 1, 3, 3), the "
                                   "shape it was encoded with"),
}
AT_HALF = ["assignment.policy=fixed", "assignment.fixed_rate=0.5"]   # every device trains at 0.5


@pytest.mark.parametrize("case", sorted(ACTOR_CASES))
def test_a_plug_in_that_breaks_in_a_ray_actor_is_one_line_naming_it(case, ray_local, scratch, capsys, tmp_path):
    code, attr, key, says = ACTOR_CASES[case]
    mod = scratch(code)
    line = one_line(capsys, cli("run", f"{key}={mod}:{attr}", *AT_HALF, rounds=1, out=str(tmp_path / "runs"),
                                **{"runtime.hosts": 1}))
    assert line.startswith(f"raysim: error: {key} {mod}:{attr} {says}"), line
    assert line.endswith("(docs/plugins.md)" if key.startswith("compression") else "(docs/channels.md)"), line


def test_the_python_api_raises_the_plug_in_error_itself_from_an_actor(ray_local, scratch, tmp_path):
    import raysim

    mod = scratch(HALF)
    strategy = __import__(mod).Half()
    sc = {**tiny_overrides_dict(), "rounds": 1, "assignment": {"policy": "fixed", "fixed_rate": 0.5},
          "runtime": {"num_cpus": 2, "hosts": 1}}
    with pytest.raises(PluginError) as err:
        raysim.simulate(sc, strategy=strategy, out=tmp_path)
    assert type(err.value) is PluginError, "not Ray's wrapper: the error the strategy caused"
    assert str(err.value).startswith(f"compression.strategy {mod}:Half plan(rate 0.5) returned a plan that keeps ")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- the checks themselves
def test_a_bad_input_raised_in_an_actor_stays_one_line_and_exit_2_however_often_ray_wraps_it():
    from ray.exceptions import RayTaskError

    from raysim.errors import api_boundary

    cause = PluginError(len, "channel.up", "decode() returned 'w' of shape (4,); expected (2, 2)")
    trace = "Traceback (most recent call last):\n  File \"host.py\", line 1, in train\n" + f"PluginError: {cause}"
    once = RayTaskError("DeviceHost.train", trace, cause).as_instanceof_cause()
    twice = RayTaskError("Coordinator.step", trace + "\n\nThe above exception...", once).as_instanceof_cause()
    # Wrapped once (a host's error, caught by the coordinator) it is a PluginError whose text is
    # the remote traceback; wrapped twice (passed on to the driver) Ray cannot even subclass it.
    assert isinstance(once, PluginError) and not isinstance(twice, PluginError)
    for err in (once, twice):
        assert "\n" in str(err) and str(cause) in str(err)
        assert describe(err) == (EXIT_BAD_INPUT, str(cause))

        def fails(e=err):
            raise e

        out = __import__("io").StringIO()
        assert guard(fails, stderr=out) == EXIT_BAD_INPUT
        assert out.getvalue() == f"raysim: error: {cause}\n"
        with pytest.raises(PluginError) as got, api_boundary():
            fails()
        assert got.value is cause


def test_a_plan_is_checked_as_it_leaves_the_strategy():
    from raysim.api import Static
    from raysim.models.base import ModelSpec
    from raysim.submodel.plan import SubmodelPlan, plan_problem, prefix_plan
    from raysim.submodel.strategies import Strategy

    spec = ModelSpec("m", {"a": 8, "b": 4}, {}, lambda sizes, rate: None, (3,), 2)
    good = prefix_plan(spec, 0.5)
    assert plan_problem(spec, good, 0.5) is None
    cases = [
        (SubmodelPlan(0.5, {"a": np.arange(4)}), "misses group 'b'"),
        (SubmodelPlan(0.5, {**good.keep, "c": np.arange(2)}), "names group 'c', which the model does not have"),
        (SubmodelPlan(0.5, {**good.keep, "b": np.array([2, 4])}), "keeps index 4 of group 'b', outside the global "
                                                                  "width [0, 4)"),
        (SubmodelPlan(0.5, {**good.keep, "b": np.array([-1, 0])}), "keeps index -1 of group 'b'"),
        (SubmodelPlan(0.5, {**good.keep, "b": np.array([1, 1])}), "not sorted and unique"),
        (SubmodelPlan(0.5, {**good.keep, "a": np.arange(3)}), "keeps 3 channels of group 'a' (width 8) at rate 0.5, "
                                                              "not rate_sizes(8, 0.5) = 4"),
        (SubmodelPlan(0.5, {**good.keep, "a": [0, 1, 2, 3]}), "keeps a list for group 'a'"),
        (SubmodelPlan(0.25, good.keep), "is at rate 0.25 for rate 0.5"),
        ({"a": np.arange(4)}, "is a dict, not a SubmodelPlan"),
    ]
    for plan, says in cases:
        why = plan_problem(spec, plan, 0.5)
        assert why is not None and says in why, (says, why)

    class Returns(Strategy):
        def __init__(self, plan):
            self.out = plan

        def plan(self, spec, rate, round_idx, device_id, global_params, seed):
            return self.out

    for plan, says in cases:
        with pytest.raises(PluginError) as err:
            Returns(plan).plan(spec, 0.5, 1, 7, {}, 0)
        text = str(err.value)
        assert text.startswith(f"compression.strategy {__name__}:test_a_plan_is_checked_as_it_leaves_the_strategy."
                               f"<locals>.Returns plan(rate 0.5) returned a plan that "), text
        assert says in text and "; expected rate_sizes(width, 0.5) sorted, unique indices" in text, text
    assert Returns(good).plan(spec, 0.5, 1, 7, {}, 0) is good
    assert Static().plan(spec, 0.5, 1, 7, {}, 0).key() == good.key()


def test_a_built_in_that_broke_a_contract_is_a_bug_to_report_not_bad_input(monkeypatch, tmp_path):
    from raysim.models.base import ModelSpec
    from raysim.submodel import strategies
    from raysim.submodel.plan import SubmodelPlan

    monkeypatch.setenv("RAYSIM_LOG_DIR", str(tmp_path))
    spec = ModelSpec("m", {"a": 8}, {}, lambda sizes, rate: None, (3,), 2)
    monkeypatch.setattr(strategies, "prefix_plan", lambda spec, rate: SubmodelPlan(rate, {"a": np.arange(9)}))
    out = __import__("io").StringIO()
    assert guard(lambda: strategies.Static().plan(spec, 0.5, 1, 7, {}, 0), stderr=out) == 1
    assert "built-in compression.strategy raysim.submodel.strategies:Static" in out.getvalue()
    assert "please report it" in out.getvalue()


def test_a_channel_is_checked_as_its_update_arrives():
    from raysim.api import FP16
    from raysim.channels.base import decoded_problem, roundtrip

    shapes = {"w": (2, 3), "b": (3,)}
    good = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    assert decoded_problem(good, shapes) is None
    for out, says in [({"w": torch.zeros(6), "b": torch.zeros(3)}, "returned 'w' of shape (6,); expected (2, 3)"),
                      ({"w": torch.zeros(2, 3)}, "returned nothing for 'b'"),
                      ({**good, "c": torch.zeros(1)}, "returned 'c', which was not encoded"),
                      ({"w": np.zeros((2, 3)), "b": torch.zeros(3)}, "returned a ndarray for 'w'"),
                      ([torch.zeros(2, 3)], "returned a list")]:
        why = decoded_problem(out, shapes)
        assert why is not None and says in why, (says, why)

    class Drops(FP16):
        def decode(self, payload, shapes):
            return {k: v for k, v in super().decode(payload, shapes).items() if k != "b"}

    with pytest.raises(PluginError, match=r"^channel.down .*Drops decode\(\) returned nothing for 'b'"):
        roundtrip(Drops(), good, torch.Generator(), "channel.down")
    assert set(roundtrip(FP16(), good, torch.Generator(), "channel.down")) == {"w", "b"}


def test_in_one_process_a_downlink_that_changes_a_shape_raises_the_plug_in_error(scratch):
    from raysim.inprocess import local_simulation
    from raysim.scenario.schema import load_scenario

    mod = scratch(FLATTENING)
    sc = load_scenario(QUICK, tiny_overrides(rounds=1, **{"channel.down": f"{mod}:Flattening"}) + AT_HALF)
    with pytest.raises(PluginError) as err:
        local_simulation(sc).step()
    assert str(err.value) == (f"channel.down {mod}:Flattening decode() returned 'features.0.weight' of shape (36,); "
                              f"expected (4, 1, 3, 3), the shape it was encoded with (docs/channels.md)")
