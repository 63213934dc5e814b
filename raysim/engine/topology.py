"""A topology: gateways between the devices and the cloud, and how devices attach to them.

The scenario's `topology:` section (`TopologyConfig`), the engine's view of it (`Gateways`: the
counts and the gateway-cloud link) and the attachment of devices to gateways. Pure numpy (the
scenario schema imports it; reading results never imports torch); the round loop through
gateways is `raysim.engine.hierarchy`.

    gw = Gateways(count=10, rounds=2, per_gateway=5, attach="label", down_bps=5e7, up_bps=5e7, latency_s=0.02)
    gw.link_s(400_000)        # (seconds down, seconds up) for a 400 kB model
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
from pydantic import Field

from raysim.seeding import rng
from raysim.settings import Section

__all__ = ["TopologyConfig", "Gateways", "attach", "check_trace_gateways", "dominant_labels", "ATTACH"]

ATTACH = ("random", "blocks", "label", "trace")


class TopologyConfig(Section):
    """Gateways between the devices and the cloud (none: devices talk to the cloud, flat FL)."""

    gateways: int = Field(0, ge=0, description="gateways between devices and the cloud (0: flat, no gateways)")
    gateway_class: str = Field("gateway", description="the catalogue class (or a fleet.classes one) whose "
                               "downlink, uplink and latency carry the gateway-cloud link")
    attach: Literal["random", "blocks", "label", "trace"] = Field(
        "random", description="how devices attach to gateways: random (balanced, at random), blocks (runs of "
        "device ids: regions), label (devices sorted by their most frequent training label, then split: each "
        "gateway sees few labels, the non-IID edges of HierFAVG), trace (the fleet.trace's gateway column)")
    gateway_rounds: int = Field(1, ge=1, description="kappa2: gateway rounds per cloud round (HierFAVG); "
                                "with an asynchronous server.mode, per upload of a gateway's model")
    per_gateway: Optional[int] = Field(None, ge=1, description="devices a gateway round aggregates at most "
                                       "(default: selection.per_round / gateways, rounded up); over-commitment "
                                       "and the deadline apply per gateway round")
    cloud_deadline: Optional[float] = Field(None, gt=0.0, allow_inf_nan=False, description="seconds a cloud "
                                            "round waits for its gateways; one not back by then is left out of "
                                            "the round (default: wait for all)")
    gateway_optimizer: str = Field("fedavg", description="how a gateway moves its model by its devices' mean "
                                   "update: a server.optimizer name (fedavg: the plain mean, HierFAVG) or an "
                                   "import path; its state lasts as topology.gateway_state says")
    gateway_params: dict[str, Any] = Field(default_factory=dict, description="the gateway optimizer's parameters")
    gateway_state: Literal["cycle", "run"] = Field(
        "cycle", description="how long a gateway optimizer's state (momentum, moments) lasts: cycle (one cloud "
        "round, or one upload's gateway rounds with an asynchronous cloud: each starts from a cloud model) or run "
        "(each gateway keeps its own for the whole run, checkpointed)")


@dataclass(frozen=True, kw_only=True)
class Gateways:
    """A topology as the engine takes it: how many gateways, how devices attach, the gateway
    rounds per cloud round, K per gateway round, and the gateway-cloud link."""

    count: int
    rounds: int
    per_gateway: int
    attach: str
    down_bps: float
    up_bps: float
    latency_s: float
    cloud_deadline: Optional[float] = None
    class_name: str = "gateway"
    keep_state: bool = False   # the gateway optimizer's state lasts the run (else one cycle)
    # The gateway class's power (W): the device awake, and its radio idle, receiving, sending
    # (NaN: unknown, and so NaN energy).
    idle_w: float = float("nan")
    radio_idle_w: float = float("nan")
    rx_w: float = float("nan")
    tx_w: float = float("nan")

    def energy_j(self, awake_s: float, down_s: float = 0.0, up_s: float = 0.0) -> float:
        """A gateway's joules: awake with its uplink radio idle for `awake_s`, receiving for
        `down_s`, sending for `up_s` (the device's idle power throughout)."""
        return (self.idle_w * (awake_s + down_s + up_s) + self.radio_idle_w * awake_s + self.rx_w * down_s
                + self.tx_w * up_s)

    def link_s(self, nbytes: int) -> tuple[float, float]:
        """Seconds to move `nbytes` from the cloud to a gateway, and back."""
        return (self.latency_s + nbytes * 8.0 / self.down_bps, self.latency_s + nbytes * 8.0 / self.up_bps)


def attach(kind: str, gateways: int, n: int, seed: int, labels: Optional[np.ndarray] = None,
           given: Optional[np.ndarray] = None) -> np.ndarray:
    """The gateway of every device (by fleet position): `random` deals a random permutation out
    in turn (balanced), `blocks` cuts the ids into runs, `label` sorts devices by `labels`
    (each one's most frequent training label; ties by position) before cutting into runs,
    `trace` takes `given` (a trace's gateway column, checked by `check_trace_gateways`).

        >>> attach("blocks", 2, 5, seed=0).tolist()
        [0, 0, 0, 1, 1]
        >>> attach("label", 2, 4, seed=0, labels=np.array([3, 1, 3, 1])).tolist()
        [1, 0, 1, 0]
    """
    if kind not in ATTACH:
        raise ValueError(f"topology.attach: {kind!r} is not one of {', '.join(ATTACH)}")
    blocks = np.arange(n, dtype=np.int64) * gateways // max(n, 1)
    if kind == "blocks":
        return blocks
    if kind == "trace":
        if given is None:
            raise ValueError("topology.attach: 'trace' needs the fleet trace's gateway column")
        return np.asarray(given, np.int64)
    out = np.empty(n, np.int64)
    if kind == "random":
        out[rng(seed, "attach").permutation(n)] = np.arange(n) % gateways
        return out
    if labels is None:
        raise ValueError("topology.attach: 'label' needs each device's labels")
    out[np.lexsort((np.arange(n), np.asarray(labels)))] = blocks
    return out


def dominant_labels(y: np.ndarray, shards: Any) -> np.ndarray:
    """Each device's most frequent training label (-1 for a device without samples)."""
    out = np.full(len(shards), -1, np.int64)
    for i, s in enumerate(shards):
        if len(s):
            out[i] = int(np.bincount(np.asarray(y)[np.asarray(s)]).argmax())
    return out


def check_trace_gateways(given: Optional[np.ndarray], gateways: int, trace: object) -> Optional[str]:
    """Why a trace's gateway column cannot attach the fleet to `gateways` gateways (None: it can)."""
    if given is None:
        return f"topology.attach: 'trace' needs a 'gateway' column in the fleet trace {trace}"
    if len(given) and int(np.max(given)) >= gateways:
        return (f"topology.attach: the fleet trace {trace} attaches a device to gateway {int(np.max(given))}, but "
                f"topology.gateways is {gateways} (gateways are numbered from 0)")
    return None
