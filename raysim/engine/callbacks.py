"""Callbacks: code of the user's that runs beside the round loop, in the driver process.

    class PrintAccuracy(Callback):
        def on_round(self, out):
            print(out.record.round, out.record.accuracy)

    raysim.simulate("scenarios/quickstart.yaml", callbacks=[PrintAccuracy()])

A callback sees every round's records before they are written. What `on_round` returns is
its say in the run:

* `None`: it only observed;
* a dict `{name: number}`: named metrics of this round, written as extra float columns of
  rounds.parquet (and logged to TensorBoard when `output.tensorboard` is on). A name must be
  new (no column of the round record, not `run`, no metric another callback gave this
  round) and made of letters, digits and `_ . / -`; a value must be a real number (NaN and
  infinities allowed);
* `Stop("reason")`, or `Stop("reason", metrics={...})`: end the run after this round. The
  round is recorded and checkpointed, the remaining callbacks still see it, and the run
  directory's manifest says `status: stopped` with `stopped_by` naming the callback, its
  reason and the round. The run is final (`raysim report` and `load_run` read it) and can
  still be continued with `--resume`.

    class StopAtTarget(Callback):
        def on_round(self, out):
            gap = 0.9 - out.record.accuracy
            if gap <= 0:
                return Stop(f"accuracy {out.record.accuracy:.3f} reached 0.9")
            return {"gap_to_target": gap}

Callbacks run in the order given (the built-in TensorBoard writer last, so it logs every
metric); `out.metrics` holds the metrics the callbacks before this one added. A callback that
returns anything else, or raises, stops the run, which is then marked failed and stays
resumable; a broken return is one line naming the callback.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from raysim.errors import PluginError
from raysim.records import RoundOutput, RoundRecord

# Letters, digits and `_ . / -`: a parquet column and a TensorBoard tag (`/` groups tags) alike.
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]{0,99}\Z")
ROUND_COLUMNS: frozenset[str] = frozenset(f.name for f in fields(RoundRecord))
RESERVED = "run"  # the column `load_runs` labels every stacked row with


@dataclass(frozen=True)
class Stop:
    """Returned by `Callback.on_round` to end the run after this round, for `reason`
    (optionally with this round's metrics)."""

    reason: str
    metrics: Mapping[str, float] = field(default_factory=dict)


OnRound = Union[None, Mapping[str, float], Stop]


class Callback:
    """Hooks of a run; override the ones you need."""

    def on_start(self, run_dir: Path, info: dict[str, Any]) -> None:
        """The run directory exists and the coordinator is up (`info`: model, rates, hosts...)."""

    def on_round(self, out: RoundOutput) -> OnRound:
        """A round finished; `out` holds its round, client and eval records. Return None, a dict
        of metrics for rounds.parquet, or `Stop(reason)` to end the run after this round."""
        return None

    def on_end(self, run_dir: Path, status: str) -> None:
        """The run ended: `complete`, `stopped`, `interrupted` or `failed`."""


def take_returned(owner: object, returned: object, out: RoundOutput) -> Optional[str]:
    """Apply what `owner`'s `on_round` returned: its metrics go into `out.metrics`; returns its
    stop reason, or None. A return that breaks the contract is a `PluginError` naming `owner`."""
    if returned is None:
        return None
    if isinstance(returned, Stop):
        if not isinstance(returned.reason, str) or not returned.reason.strip():
            raise PluginError(owner, "callback", f"returned Stop({returned.reason!r}); expected a reason: a non-empty string")
        _add_metrics(owner, returned.metrics, out)
        return " ".join(returned.reason.split())
    if isinstance(returned, Mapping):
        _add_metrics(owner, returned, out)
        return None
    raise PluginError(owner, "callback", f"on_round returned a {type(returned).__name__}; "
                                         f"expected None, a dict of metrics or Stop(reason)")


def _add_metrics(owner: object, metrics: object, out: RoundOutput) -> None:
    """Check every (name, value) of `metrics` and add it to `out.metrics` as a float."""
    if not isinstance(metrics, Mapping):
        raise PluginError(owner, "callback", f"returned metrics as a {type(metrics).__name__}; expected a dict")
    checked: dict[str, float] = {}
    for name, value in metrics.items():
        checked[_metric_name(owner, name, out)] = _metric_value(owner, name, value)
    out.metrics.update(checked)


def _metric_name(owner: object, name: object, out: RoundOutput) -> str:
    """`name` if it can be a new column of rounds.parquet this round."""
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        raise PluginError(owner, "callback", f"returned metric {name!r}; expected a name of letters, digits and "
                                             f"_ . / - starting with a letter or _ (at most 100 characters)")
    if name == RESERVED:
        raise PluginError(owner, "callback", f"returned metric {name!r}, a name load_runs gives the column that "
                                             f"labels each row's run; give it another name")
    if name in ROUND_COLUMNS:
        raise PluginError(owner, "callback", f"returned metric {name!r}, a column rounds.parquet already has; "
                                             f"give it a new name")
    if name in out.metrics:
        raise PluginError(owner, "callback", f"returned metric {name!r}, which another callback gave in round "
                                             f"{out.record.round}; give it a new name")
    return name


def _metric_value(owner: object, name: str, value: object) -> float:
    """`value` as a float, if it is a real number (bools are refused: they are flags, not metrics)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PluginError(owner, "callback", f"returned metric {name!r} = {value!r} ({type(value).__name__}); "
                                             f"expected a real number")
    return float(value)
