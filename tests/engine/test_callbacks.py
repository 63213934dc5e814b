"""What a callback's `on_round` may return: metrics for rounds.parquet, a stop, or nothing;
anything else is one line naming the callback (no Ray: the driver's check alone)."""

import math

import numpy as np
import pytest

from raysim.engine.callbacks import Callback, Stop, take_returned
from raysim.errors import BadInput, PluginError
from raysim.records import ClientRecords, RoundOutput, RoundRecord


def round_output(r=1):
    rec = RoundRecord(round=r, sim_start=0.0, sim_time=10.0, duration=10.0, wall_s=0.1, coordinator_s=0.0,
                      train_s=0.1, selected=2, trained=2, samples_trained=40)
    return RoundOutput(rec, ClientRecords())


class Mine(Callback):
    pass


def test_a_dict_adds_float_metrics_and_a_stop_carries_its_reason_and_metrics():
    out = round_output()
    assert take_returned(Mine(), None, out) is None and out.metrics == {}
    assert take_returned(Mine(), {"gap": 1, "val/loss": np.float32(0.5), "nan_ok": float("nan")}, out) is None
    assert out.metrics["gap"] == 1.0 and type(out.metrics["gap"]) is float and out.metrics["val/loss"] == 0.5
    assert math.isnan(out.metrics["nan_ok"])
    reason = take_returned(Mine(), Stop("accuracy\n reached 0.9", metrics={"best": 0.91}), out)
    assert reason == "accuracy reached 0.9"  # one line, for the manifest and the message
    assert out.metrics["best"] == 0.91


@pytest.mark.parametrize("returned, needle", [
    ({"fine": 1.0, "accuracy": 0.5}, "'accuracy', a column rounds.parquet already has"),
    ({"n_ok": 3}, "'n_ok', a column rounds.parquet already has"),
    ({"run": 3}, "'run', a name load_runs gives the column that labels each row's run"),
    ({"gap": "high"}, "'gap' = 'high' (str); expected a real number"),
    ({"flag": True}, "'flag' = True (bool); expected a real number"),
    ({"gap": [1.0]}, "expected a real number"),
    ({"has space": 1.0}, "returned metric 'has space'; expected a name of letters"),
    ({3: 1.0}, "returned metric 3; expected a name"),
    (0.5, "on_round returned a float; expected None, a dict of metrics or Stop(reason)"),
    (True, "on_round returned a bool"),
    (Stop(""), "returned Stop(''); expected a reason"),
    (Stop("why", metrics={"loss": 1.0}), "'loss', a column rounds.parquet already has"),
])
def test_a_broken_return_is_one_line_naming_the_callback(returned, needle):
    out = round_output()
    with pytest.raises(PluginError) as err:
        take_returned(Mine(), returned, out)
    msg = str(err.value)
    assert msg.startswith("callback test_callbacks:Mine ") and needle in msg, msg
    assert "\n" not in msg and isinstance(err.value, BadInput)  # the CLI's exit code 2, one line
    assert out.metrics == {}  # a refused return adds nothing, not even its valid names


def test_two_callbacks_may_not_give_the_same_metric_in_a_round():
    out = round_output(4)
    take_returned(Mine(), {"gap": 1.0}, out)
    with pytest.raises(PluginError, match="'gap', which another callback gave in round 4"):
        take_returned(Mine(), {"gap": 2.0}, out)
    assert out.metrics == {"gap": 1.0}
