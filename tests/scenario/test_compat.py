"""The one table of mode and feature compatibility (`raysim.scenario.compat`): every row refuses
what it says with its message, and everything it allows validates and resolves."""

import itertools
from pathlib import Path

import pytest
import yaml
from helpers import tiny_overrides

from raysim.errors import ScenarioError
from raysim.scenario import compat
from raysim.scenario.resolve import components
from raysim.scenario.schema import load_scenario

QUICK = "scenarios/quickstart.yaml"
FEATURES = list(dict.fromkeys(rule.feature for rule in compat.RULES))   # in table order, each once


def overrides(*parts: dict) -> list[str]:
    merged: dict = {}
    for p in parts:
        merged.update(p)
    return tiny_overrides() + [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                               for k, v in merged.items()]


def validate(sets: list[str]):
    """The scenario and its components, as every entry point builds them."""
    sc = load_scenario(QUICK, sets)
    return sc, components(sc)


def rule_cases():
    for i, rule in enumerate(compat.RULES):
        for values in itertools.product(*rule.refused.values()):
            chosen = dict(zip(rule.refused, values))
            yield pytest.param(rule, chosen, id=f"{i}-{rule.feature.key}-" + "-".join(values))


@pytest.mark.parametrize("rule, chosen", list(rule_cases()))
def test_every_row_refuses_its_combination_with_its_own_message(rule, chosen):
    setting = [compat.SETTINGS[name][value] for name, value in chosen.items()]
    with pytest.raises(ScenarioError) as err:
        validate(overrides(*setting, rule.feature.example))
    values = {**{name: next(iter(v)) for name, v in compat.SETTINGS.items()}, **chosen}
    value = rule.feature.doc_value()
    assert str(err.value) == rule.message(value, values)
    assert "\n" not in str(err.value) and str(err.value).startswith(rule.feature.key + ": ")
    if chosen.get("mode") in compat.ASYNC:
        assert f"server.mode {chosen['mode']!r}" in str(err.value)   # the message names the mode it met


def combinations():
    """Every setting (3 modes x 2 topologies x 2 placements x 2 clocks), alone and with each feature on."""
    for values in itertools.product(*(list(v) for v in compat.SETTINGS.values())):
        chosen = dict(zip(compat.SETTINGS, values))
        for feature in [None, *FEATURES]:
            yield chosen, feature


def combination_overrides(chosen, feature):
    parts = [compat.SETTINGS[name][value] for name, value in chosen.items()]
    return overrides(*parts, feature.example if feature is not None else {})


def test_nothing_but_the_table_refuses_a_combination(monkeypatch):
    # With an empty table every setting and every feature in it validates and resolves: no
    # refusal of a mode, topology, placement or clock is left anywhere else.
    monkeypatch.setattr(compat, "RULES", ())
    for chosen, feature in combinations():
        validate(combination_overrides(chosen, feature))


def test_every_combination_the_table_allows_validates_and_every_other_is_refused_by_its_first_row():
    allowed = refused = 0
    for chosen, feature in combinations():
        sets = combination_overrides(chosen, feature)
        features_on = {f for f in FEATURES if f is feature}
        # a setting turns on the feature of the same name (an asynchronous mode, gateways, the
        # realtime clock); an example may turn on another one (energy-aware selection: batteries)
        example = {**{k: v for name, value in chosen.items() for k, v in compat.SETTINGS[name][value].items()},
                   **(feature.example if feature is not None else {})}
        features_on |= {f for f in FEATURES if not f.from_components and f.key in example and f.on(example[f.key])}
        if feature is not None and feature.from_components:
            features_on |= {f for f in FEATURES if f.from_components and f.example == feature.example}
        rows = [r for r in compat.RULES if r.feature in features_on and r.applies(chosen)]
        if not rows:
            sc, comps = validate(sets)
            assert compat.refusals(sc, comps) == []
            allowed += 1
            continue
        with pytest.raises(ScenarioError) as err:
            validate(sets)
        first = rows[0].feature
        value = first.doc_value() if first.from_components else example.get(first.key, first.doc_value())
        assert str(err.value) == rows[0].message(value, chosen), (chosen, feature)
        refused += 1
    # 24 settings x 15 (no feature, and each): 8 settings are allowed on their own (realtime only
    # dedicated, sync and flat; dedicated only sync and flat), and most features in most of them
    assert allowed > 60 and refused > 200, (allowed, refused)


def test_the_table_holds_the_refusals_the_scattered_checks_made():
    # Each rule once held its own copy somewhere (schema.py, resolve.py, the engine): the table
    # must keep every one of them.
    rows = {(r.feature.key, tuple(sorted((k, tuple(v)) for k, v in r.refused.items()))) for r in compat.RULES}
    asyn = ("mode", compat.ASYNC)
    assert rows >= {
        ("runtime.clock", (("placement", ("pooled",)),)),
        ("server.mode", (("placement", ("dedicated",)),)),
        ("topology.gateways", (("placement", ("dedicated",)),)),
        ("runtime.device", (("placement", ("dedicated",)),)),
        ("runtime.hosts_per", (("placement", ("dedicated",)),)),
        ("assignment.policy", (asyn, ("topology", ("flat",)))),
        ("deadline.policy", (asyn, ("topology", ("flat",)))),
        ("selection.policy", (asyn, ("topology", ("flat",)))),
        ("energy.batteries", (asyn,)),
        ("topology.cloud_deadline", (asyn, ("topology", ("gateways",)))),
        ("server.concurrency", (asyn, ("topology", ("gateways",)))),
        ("channel.up_params.error_feedback", (asyn,)),
        ("train.algorithm", (("topology", ("gateways",)),)),
        ("train.algorithm", (asyn,)),
    }


def test_a_plug_in_client_algorithm_with_state_is_refused_like_scaffold(tmp_path, monkeypatch):
    (tmp_path / "stateful_algo.py").write_text(
        "from raysim.api import LocalSGD\n\nclass Remembers(LocalSGD):\n    keeps_state = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ScenarioError, match=r"^train.algorithm: Remembers keeps state across rounds, which is kept "
                                            r"in synchronous rounds only; server.mode 'fedasync' does not keep it yet$"):
        validate(overrides({"train.algorithm": "stateful_algo:Remembers", "server.mode": "fedasync"}))
    validate(overrides({"train.algorithm": "stateful_algo:Remembers"}))   # in synchronous rounds: fine


def test_docs_modes_md_holds_the_table_as_it_is():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "modes.md").read_text()
    assert compat.markdown() in doc, "regenerate the table in docs/modes.md: python -c 'from raysim.scenario " \
                                     "import compat; print(compat.markdown())'"
    assert len(compat.markdown().splitlines()) == len(compat.RULES) + 2
