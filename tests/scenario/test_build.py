"""The builder's choices about a scenario's rate ladder."""

from pathlib import Path

import pytest
from helpers import tiny_overrides

from raysim.errors import ScenarioError
from raysim.scenario.build import ladder, ladder_note, model_spec
from raysim.scenario.resolve import components
from raysim.scenario.schema import load_scenario


def scenario(*extra):
    return load_scenario("scenarios/quickstart.yaml", tiny_overrides() + list(extra))


def test_a_ladder_without_1_is_refused_with_the_static_strategy():
    sc = scenario("model.rates=[0.5,0.25]", "compression.strategy=static")
    comps = components(sc)
    spec = model_spec(comps, (1, 12, 12), 10)
    with pytest.raises(ScenarioError, match=r"model.rates: \[0.5, 0.25\] has no 1.*never train"):
        ladder(sc, comps, spec)


@pytest.mark.parametrize("strategy", ["rolling", "random"])
def test_a_ladder_without_1_runs_with_a_note_when_channels_rotate(strategy):
    sc = scenario("model.rates=[0.5,0.25]", f"compression.strategy={strategy}")
    comps = components(sc)
    assert ladder(sc, comps, model_spec(comps, (1, 12, 12), 10)) == [0.5, 0.25]
    note = ladder_note(sc)
    assert note is not None and "no device trains the full global model" in note and "0.5" in note


def test_a_ladder_with_1_has_no_note():
    assert ladder_note(scenario()) is None
    assert ladder_note(scenario("model.rates=[0.5]", "compression.baseline=fedavg-capable")) is None


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[2].glob("scenarios/*.yaml")),
                         ids=lambda p: p.stem)
def test_every_shipped_scenario_is_valid(path):
    assert load_scenario(path).name


def test_more_gateways_than_a_trace_has_devices_is_refused_before_anything_runs(tmp_path):
    from raysim.scenario.build import prepare

    trace = tmp_path / "fleet.csv"
    trace.write_text("device_id,flops,memory_bytes,down_kbps,up_kbps\n" + "".join(
        f"{i},1e9,100000000,1000,1000\n" for i in range(2)))
    sc = scenario(f"fleet.trace={trace}", "selection.per_round=1", "topology.gateways=3")
    with pytest.raises(ScenarioError, match=r"^topology.gateways: 3 gateways for 2 devices$"):
        prepare(sc)
    assert len(prepare(scenario(f"fleet.trace={trace}", "selection.per_round=1", "topology.gateways=2")).fleet) == 2
