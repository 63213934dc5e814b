"""The public API: run a simulation from Python, and the contracts of every pluggable component.

    import raysim
    run = raysim.simulate("scenarios/quickstart.yaml", client=raysim.api.FedProx(mu=0.01))
    run.rounds[["round", "sim_time", "accuracy"]].tail()

`simulate` uses the same Ray runtime as `raysim run` (pooled or dedicated, a local instance or
`runtime.address`), writes the same run directory and returns it loaded. A component given as
an object replaces the scenario's choice; the scenario names the rest.

The contracts (each a small base class or callable; the built-ins implement the same ones):

- **model**: a callable `(input_shape, num_classes) -> torch.nn.Module` giving the full-width
  global model. raysim slices a plain module into narrower submodels by itself (torch.fx; see
  docs/slicing.md); a factory may instead return a `ModelSpec` that declares its channel
  groups by hand, as the built-in families do. A model that cannot be sliced still trains
  whole (`compression.strategy: full`, `compression.baseline: fedavg-capable`).
- **dataset**: a callable `(seed) -> (x_train, y_train, x_test, y_test)` or
  `(..., groups)` of numpy arrays: features of any shape `(N, ...)`, integer labels from 0,
  and `groups` one id per training sample (a user: enables `partition.kind: natural`); or a
  `Dataset`. Checked on load.
- **compression strategy**: `Strategy.plan(spec, rate, round, device, global_params, seed)
  -> SubmodelPlan` (which channels of every group a device keeps).
- **rate assigner**: `Assigner.assign(AssignRequest) -> Assignment` (a rate per device, or
  NaN with a reason; the request carries predicted times, predicted energy and battery charge).
- **selection**: `Selector.select(SelectRequest) -> ids` (which online devices a round asks;
  the request carries each one's battery level).
- **client algorithm**: `ClientAlgorithm.train(model, LocalData, start) -> LocalResult`;
  `LocalSGD` with an overridable `objective` covers most (`FedProx` is 6 lines of it);
  `keeps_state` / `server_state` give it state per device and a server quantity across rounds
  (`Scaffold`).
- **server optimizer**: `ServerOptimizer.step(params, delta, held, ServerState)`; `FedOpt` for
  adaptive ones (`FedAdam`, `FedYogi`).
- **channel**: `Channel.encode_tensor / decode_tensor / tensor_bytes` (how an update goes on
  the wire, with its exact byte count; `error_feedback` keeps a residual per device).
- **callbacks**: `Callback.on_start / on_round / on_end`, in the driver process; `on_round`
  may return a dict of named metrics (extra columns of rounds.parquet) or `Stop(reason)` to
  end the run early. `TensorBoard` logs every round's scalars (`output.tensorboard: true`
  switches it on without code).

In a scenario, any of them is named by import path, `package.module:attr`, with its own
parameters under `params:` (validated by the class's `Params` model or its signature).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence, Union

import numpy as np

from raysim.channels import FP16, Channel, Dense, Payload, Quantize, RandomK, Sign, TopK
from raysim.client.algorithms import ClientAlgorithm, FedProx, LocalData, LocalResult, LocalSGD, Scaffold
from raysim.data.base import Dataset
from raysim.engine.assignment import Assigner, Assignment, AssignRequest, FitDeadline, FitEnergy, FitMemory, Fixed
from raysim.engine.callbacks import Callback, Stop
from raysim.engine.selection import EnergyAware, Selector, SelectRequest, Uniform
from raysim.models.base import ModelSpec
from raysim.records import RoundOutput
from raysim.rundir.tensorboard import TensorBoard
from raysim.scenario.schema import Scenario, ScenarioError, load_scenario, parse_scenario
from raysim.seeding import rng, torch_generator
from raysim.server.optimizers import FedAdam, FedAvg, FedAvgM, FedOpt, FedYogi, ServerOptimizer, ServerState
from raysim.slicing import SlicingError, infer_spec
from raysim.submodel.plan import SubmodelPlan, rate_sizes
from raysim.submodel.strategies import Full, Magnitude, Random, Rolling, Static, Strategy, channel_l1

__all__ = [
    "simulate", "ModelFactory", "DatasetFactory", "ModelSpec", "Dataset", "Strategy", "SubmodelPlan",
    "Static", "Rolling", "Random", "Magnitude", "Full", "Assigner", "AssignRequest", "Assignment", "FitMemory",
    "FitDeadline", "FitEnergy", "Fixed", "Selector", "SelectRequest", "Uniform", "EnergyAware", "ClientAlgorithm",
    "LocalSGD", "FedProx", "Scaffold", "LocalData", "LocalResult", "Channel", "Payload", "Dense", "FP16", "Quantize", "TopK",
    "RandomK", "Sign",
    "ServerOptimizer", "ServerState", "FedAvg", "FedAvgM", "FedOpt", "FedAdam", "FedYogi", "Callback", "Stop", "TensorBoard",
    "RoundOutput", "as_scenario", "rate_sizes", "rng", "torch_generator", "channel_l1", "infer_spec", "SlicingError",
]


class ModelFactory(Protocol):
    """`(input_shape, num_classes) -> nn.Module` (or a `ModelSpec`): the full-width global model."""

    def __call__(self, input_shape: tuple[int, ...], num_classes: int) -> Any: ...


class DatasetFactory(Protocol):
    """`(seed) -> (x_train, y_train, x_test, y_test[, groups])` of numpy arrays, or a `Dataset`."""

    def __call__(self, seed: int) -> Union[Dataset, tuple[np.ndarray, ...]]: ...


def as_scenario(scenario: Union[str, Path, Mapping[str, Any], Scenario], overrides: Sequence[str] = ()) -> Scenario:
    """A Scenario from a YAML path, a mapping or a Scenario (plus `key=value` overrides)."""
    if isinstance(scenario, Scenario):
        return parse_scenario(scenario.model_dump(mode="json"), list(overrides)) if overrides else scenario
    if isinstance(scenario, (str, Path)):
        return load_scenario(scenario, list(overrides))
    if isinstance(scenario, Mapping):
        return parse_scenario(dict(scenario), list(overrides))
    raise ScenarioError(f"scenario: expected a YAML path, a mapping or a Scenario, got {type(scenario).__name__}")


def simulate(scenario: Union[str, Path, Mapping[str, Any], Scenario, None] = None, *, model: Optional[ModelFactory] = None,
             dataset: Optional[DatasetFactory] = None, strategy: Optional[Strategy] = None,
             assigner: Optional[Assigner] = None, client: Optional[ClientAlgorithm] = None,
             server: Optional[ServerOptimizer] = None, selector: Optional[Selector] = None,
             callbacks: Sequence[Callback] = (),
             out: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (), progress: bool = False,
             address: Optional[str] = None, resume: Optional[Union[str, Path]] = None):
    """Run a scenario with any components replaced by objects; returns the loaded `raysim.Run`.

    `out` is the parent of the run directory (default: the scenario's `output.dir`);
    `overrides` are `--set`-style `key=value` strings; `address` joins a Ray cluster
    (default: `runtime.address`, else a private local instance). `resume` continues a stopped
    run directory from its last checkpoint (its own scenario; pass the same objects again).
    `callbacks` see every round and may add metrics to it or end the run early
    (`raysim.engine.callbacks`); a run a callback stopped is returned like a complete one.

        run = simulate({"rounds": 5, "fleet": {"devices": 200}}, model=my_model, out="/tmp/runs")
        run.rounds.accuracy.iloc[-1]
    """
    from raysim.errors import api_boundary  # noqa: PLC0415

    # Bad input leaves as its own one-line exception; anything unanticipated as InternalError
    # naming the log file that holds its traceback.
    with api_boundary():
        return _simulate(scenario, model=model, dataset=dataset, strategy=strategy, assigner=assigner, client=client,
                         server=server, selector=selector, callbacks=callbacks, out=out, overrides=overrides, progress=progress,
                         address=address, resume=resume)


def _simulate(scenario, *, model, dataset, strategy, assigner, client, server, selector, callbacks, out, overrides, progress,
              address, resume):
    from raysim.rundir.reader import load_run  # noqa: PLC0415
    from raysim.runtime.runner import run  # noqa: PLC0415
    from raysim.scenario.resolve import components  # noqa: PLC0415

    if resume is not None:
        if scenario is not None:
            raise ScenarioError("simulate: give a scenario or resume=, not both (a resumed run keeps its own)")
        scenario = Path(resume) / "scenario.yaml"
    elif scenario is None:
        raise ScenarioError("simulate: a scenario is required")
    sc = as_scenario(scenario, overrides)
    comps = components(sc, model=model, dataset=dataset, strategy=strategy, assigner=assigner, client=client,
                       server=server, selector=selector)
    res = run(sc, out_root=str(out) if out is not None else None, address=address, progress=progress, comps=comps,
              callbacks=callbacks, resume=Path(resume) if resume is not None else None)
    return load_run(res.path)
