"""Which server modes, topologies, placements and clocks combine with which features: one table.

A run's *setting* is four choices: its server mode (`sync`, `fedbuff`, `fedasync`), its topology
(`flat`, or `gateways` when `topology.gateways` > 0), its placement (`pooled`, `dedicated`) and its
clock (`virtual`, `realtime`). Some features are refused in some settings. `RULES` lists every
such refusal once, as data: the feature (the scenario key that turns it on and when it counts as
on), the setting values it is refused with, and the reason; the one-line error is generated from
the row. Nothing else in raysim refuses a combination of a setting and a feature.

The schema's model validator calls `check(sc)` (every entry point validates its scenario: `raysim
run`, a sweep's every point before anything runs, `raysim.simulate`, `local_simulation`), which
checks every row whose feature the scenario itself says. Three features are only known once the
components are objects (a channel's `error_feedback`, a client algorithm's `keeps_state` /
`server_state`: a plug-in declares them), and `raysim.scenario.resolve.components` checks their
rows (`check(sc, comps)`) as soon as it has built them, before anything is loaded or run.

    >>> from raysim.scenario.schema import load_scenario
    >>> load_scenario("scenarios/quickstart.yaml", ["server.mode=fedasync", "runtime.placement=dedicated"])
    Traceback (most recent call last):
    raysim.errors.ScenarioError: server.mode: 'fedasync' runs on runtime.placement 'pooled' with runtime.clock 'virtual'
    >>> refusals(load_scenario("scenarios/quickstart.yaml"))
    []

`markdown()` renders the table (docs/modes.md holds it; a test keeps it current).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from raysim.errors import ScenarioError

if TYPE_CHECKING:
    # the table reads a validated scenario and, for plug-ins' declared traits, the resolved
    # components; both modules call `check`, so these are names only (no import cycle)
    Scenario = Any
    Components = Any

ASYNC = ("fedbuff", "fedasync")

# Each setting, its values, and the scenario overrides that choose each value (the docs show
# them; the tests combine them with every feature).
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "mode": {"sync": {}, "fedbuff": {"server.mode": "fedbuff"}, "fedasync": {"server.mode": "fedasync"}},
    "topology": {"flat": {}, "gateways": {"topology.gateways": 3}},
    "placement": {"pooled": {}, "dedicated": {"runtime.placement": "dedicated"}},
    "clock": {"virtual": {}, "realtime": {"runtime.clock": "realtime"}},
}
SETTING_NAMES = {"mode": "server.mode", "topology": "topology", "placement": "runtime.placement",
                 "clock": "runtime.clock"}


def setting(sc: "Scenario") -> dict[str, str]:
    """The scenario's setting: its value of each of `SETTINGS`."""
    return {"mode": sc.server.mode, "topology": "gateways" if sc.topology.gateways else "flat",
            "placement": sc.runtime.placement, "clock": sc.runtime.clock}


@dataclass(frozen=True, eq=False)   # eq=False: a feature is itself (hashable by identity)
class Feature:
    """A feature a scenario turns on: `key` names it in the scenario (and starts its refusals'
    message), `read` gives its value, `on` says whether that value turns it on, `shown` how
    the message quotes the value ('' for a switch). `from_components`: read from the resolved
    components (`read(sc, comps)`), not the scenario. `example`: overrides that turn it on;
    `shows`: the value the docs quote (default: the example's value of `key`)."""

    key: str
    label: str
    read: Callable[["Scenario", Optional["Components"]], Any]
    on: Callable[[Any], bool]
    example: Mapping[str, Any]
    shown: Callable[[Any], str] = repr
    from_components: bool = False
    shows: Any = None

    def doc_value(self) -> Any:
        return self.shows if self.shows is not None else self.example.get(self.key, True)


def _switch(value: Any) -> str:
    return ""


def _class_name(value: Any) -> str:
    return value if isinstance(value, str) else type(value).__name__


@dataclass(frozen=True, eq=False)
class Rule:
    """`feature` is refused when the setting has, for every setting named in `refused`, one of
    its values. `why` follows the feature's key and shown value in the message; it may name the
    setting's values as {mode}, {topology}, {placement}, {clock}."""

    feature: Feature
    refused: Mapping[str, tuple[str, ...]]
    why: str

    def applies(self, values: Mapping[str, str]) -> bool:
        return all(values[s] in allowed for s, allowed in self.refused.items())

    def message(self, value: Any, values: Mapping[str, str]) -> str:
        shown = self.feature.shown(value)
        return f"{self.feature.key}: {shown + ' ' if shown else ''}{self.why.format(**values)}"


# ---------------------------------------------------------------------------- the features
ASYNC_MODE = Feature("server.mode", "an asynchronous server (fedbuff, fedasync)", lambda sc, c: sc.server.mode,
                     lambda v: v in ASYNC, {"server.mode": "fedbuff"})
GATEWAYS = Feature("topology.gateways", "gateways between devices and the cloud", lambda sc, c: sc.topology.gateways,
                   lambda v: v > 0, {"topology.gateways": 3}, _switch)
REALTIME = Feature("runtime.clock", "the realtime clock", lambda sc, c: sc.runtime.clock, lambda v: v == "realtime",
                   {"runtime.clock": "realtime"})
CUDA = Feature("runtime.device", "training on CUDA GPUs", lambda sc, c: sc.runtime.device, lambda v: v == "cuda",
               {"runtime.device": "cuda"})
HOSTS_PER_NODE = Feature("runtime.hosts_per", "one device host per node", lambda sc, c: sc.runtime.hosts_per,
                         lambda v: v == "node", {"runtime.hosts_per": "node"})
FIT_DEADLINE = Feature("assignment.policy", "rates that fit the deadline (fit-deadline)",
                       lambda sc, c: sc.assignment.policy, lambda v: v == "fit-deadline",
                       {"assignment.policy": "fit-deadline"})
PARTIAL = Feature("deadline.policy", "partial work before the deadline", lambda sc, c: sc.deadline.policy,
                  lambda v: v == "partial", {"deadline.policy": "partial"})
SELECTION = Feature("selection.policy", "a selection policy other than uniform (energy-aware, a plug-in)",
                    lambda sc, c: sc.selection.policy, lambda v: v != "uniform",
                    {"selection.policy": "energy-aware", "energy.batteries": True})
BATTERIES = Feature("energy.batteries", "batteries", lambda sc, c: sc.energy.batteries, bool,
                    {"energy.batteries": True}, _switch)
CLOUD_DEADLINE = Feature("topology.cloud_deadline", "a deadline on cloud rounds", lambda sc, c: sc.topology.cloud_deadline,
                         lambda v: v is not None, {"topology.cloud_deadline": 60}, _switch)
CONCURRENCY = Feature("server.concurrency", "devices training at once (C)", lambda sc, c: sc.server.concurrency,
                      lambda v: v is not None, {"server.concurrency": 4}, _switch)
ERROR_FEEDBACK = Feature("channel.up_params.error_feedback", "error feedback on the uplink channel",
                         lambda sc, c: bool(c is not None and c.channel_up.error_feedback), bool,
                         {"channel.up": "topk", "channel.up_params": {"fraction": 0.1, "error_feedback": True}},
                         _switch, from_components=True)
SERVER_QUANTITY = Feature("train.algorithm", "a client algorithm with a server quantity (scaffold)",
                          lambda sc, c: c.client if c is not None and c.client.server_state else None,
                          lambda v: v is not None, {"train.algorithm": "scaffold"}, _class_name,
                          from_components=True, shows="Scaffold")
CLIENT_STATE = Feature("train.algorithm", "a client algorithm with state across rounds (scaffold)",
                       lambda sc, c: c.client if c is not None and (c.client.keeps_state or c.client.server_state)
                       else None, lambda v: v is not None, {"train.algorithm": "scaffold"}, _class_name,
                       from_components=True, shows="Scaffold")

# ---------------------------------------------------------------------------- the table
# The first row that applies is the one reported.
NO_DEADLINE = "needs rounds with a deadline; server.mode {mode!r} has none"
RULES: tuple[Rule, ...] = (
    Rule(REALTIME, {"placement": ("pooled",)}, "needs runtime.placement 'dedicated'"),
    Rule(ASYNC_MODE, {"placement": ("dedicated",)}, "runs on runtime.placement 'pooled' with runtime.clock 'virtual'"),
    Rule(GATEWAYS, {"placement": ("dedicated",)}, "runs on runtime.placement 'pooled' with runtime.clock 'virtual'"),
    Rule(CUDA, {"placement": ("dedicated",)}, "needs runtime.placement 'pooled' (a dedicated device trains under a "
         "CPU memory cap)"),
    Rule(HOSTS_PER_NODE, {"placement": ("dedicated",)}, "applies to placement 'pooled' only"),
    # through gateways, the gateway rounds keep their deadline; only the cloud is asynchronous
    Rule(FIT_DEADLINE, {"mode": ASYNC, "topology": ("flat",)}, NO_DEADLINE + " (use fit-memory)"),
    Rule(PARTIAL, {"mode": ASYNC, "topology": ("flat",)}, NO_DEADLINE),
    Rule(SELECTION, {"mode": ASYNC, "topology": ("flat",)}, "applies to synchronous rounds; server.mode {mode!r} "
         "dispatches idle devices at random"),
    Rule(BATTERIES, {"mode": ASYNC}, "tracked in synchronous rounds only; server.mode {mode!r} does not track them yet"),
    Rule(CLOUD_DEADLINE, {"mode": ASYNC, "topology": ("gateways",)}, "applies to synchronous cloud rounds; with "
         "server.mode {mode!r} the cloud waits for no gateway"),
    Rule(CONCURRENCY, {"mode": ASYNC, "topology": ("gateways",)}, "with topology.gateways every gateway is always at "
         "work; server.mode {mode!r} takes their models as they arrive"),
    Rule(ERROR_FEEDBACK, {"mode": ASYNC}, "residuals are kept in synchronous rounds only; server.mode {mode!r} does "
         "not keep them yet"),
    Rule(SERVER_QUANTITY, {"topology": ("gateways",)}, "keeps a server quantity, which does not pass through gateways "
         "yet (topology.gateways is set)"),
    Rule(CLIENT_STATE, {"mode": ASYNC}, "keeps state across rounds, which is kept in synchronous rounds only; "
         "server.mode {mode!r} does not keep it yet"),
)


def refusals(sc: "Scenario", comps: Optional["Components"] = None) -> list[str]:
    """The message of every row that refuses this scenario, in table order (rows whose feature
    the components say are read only when `comps` is given)."""
    values = setting(sc)
    out = []
    for rule in RULES:
        f = rule.feature
        if f.from_components and comps is None:
            continue
        if rule.applies(values):
            value = f.read(sc, comps)
            if f.on(value):
                out.append(rule.message(value, values))
    return out


def check(sc: "Scenario", comps: Optional["Components"] = None) -> None:
    """Raise a one-line ScenarioError for the first row that refuses this scenario (and, with
    `comps`, its components)."""
    found = refusals(sc, comps)
    if found:
        raise ScenarioError(found[0])


def _values(refused: Mapping[str, tuple[str, ...]]) -> str:
    return ", ".join(f"{SETTING_NAMES[s]} {' or '.join(v)}" for s, v in refused.items())


def markdown() -> str:
    """The table as markdown: one row per refusal, with the error it gives."""
    lines = ["| feature | turned on by | refused with | the error |", "| --- | --- | --- | --- |"]
    for rule in RULES:
        f = rule.feature
        example = ", ".join(f"`{k}: {_yaml(v)}`" for k, v in f.example.items())
        values = {name: next(iter(choices)) for name, choices in SETTINGS.items()}
        values.update({name: allowed[0] for name, allowed in rule.refused.items()})
        lines.append(f"| {f.label} | {example} | {_values(rule.refused)} | {rule.message(f.doc_value(), values)} |")
    return "\n".join(lines) + "\n"


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)
