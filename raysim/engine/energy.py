"""Energy of a device's part in a round: its predicted times x the power of each state.

A selected device that is sent to train follows its predicted timeline (download, compute,
upload) until it is done or the round closes, whichever comes first, and then waits for the
round to close:

    compute J = compute seconds  x the device's compute power
    tx J      = upload seconds   x its radio's transmit power   (+ the tail energy, if it sent)
    rx J      = download seconds x its radio's receive power    (+ the tail energy, if it received)
    idle J    = the rest of the round x (device idle + radio idle power)

A duty-cycled radio (LoRa) is on air only part of a transfer: the seconds it must wait off air
between messages cost the radio's idle power, not its transmit or receive power. Each transfer
is cut at the round's close in proportion (the same share of it on air).

A device cut off by the round's close (late under `drop`, over-committed past the first K)
spent what it did until then; a partial device computes only its share of the work; a device
that ran out of memory fails at its first step (no compute, no upload); an excluded device does
no FL work and spends nothing. Devices of unknown power (a trace's own class) get NaN.

    >>> t = Phases(np.array([1.0]), np.array([4.0]), np.array([2.0]), np.array([1.0]), np.array([True]))
    >>> e = phase_energy(seconds(t, 10.0), {"compute_w": np.array([2.0]), "idle_w": np.array([0.5]),
    ...                  "tx_w": np.array([1.0]), "rx_w": np.array([0.5]), "radio_idle_w": np.array([0.0]),
    ...                  "tail_j": np.array([0.0])})
    >>> float(e.compute[0]), float(e.tx[0]), float(e.rx[0]), float(e.idle[0]), float(e.total[0])
    (8.0, 2.0, 0.5, 1.5, 12.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Union, cast

import numpy as np

__all__ = ["Phases", "Seconds", "Energy", "seconds", "phase_energy", "work_energy"]


@dataclass(frozen=True)
class Phases:
    """Selected devices' predicted phases (s) and what they were asked to do.

    `work`: the share of the compute they were asked for (1; a partial device's share; 0 for a
    device that fails before computing); `sent`: whether they were sent at all (False: excluded);
    `wait_download` / `wait_upload`: the seconds of each transfer a duty-cycled radio spends off
    air (None: none).
    """

    t_download: np.ndarray
    t_compute: np.ndarray
    t_upload: np.ndarray
    work: np.ndarray
    sent: np.ndarray
    wait_download: Optional[np.ndarray] = None
    wait_upload: Optional[np.ndarray] = None


@dataclass(frozen=True)
class Seconds:
    """Seconds each device spent downloading, computing, uploading and waiting in the round;
    `download_air` / `upload_air`: the part of each transfer on air (the rest waits off air)."""

    download: np.ndarray
    compute: np.ndarray
    upload: np.ndarray
    idle: np.ndarray
    download_air: np.ndarray
    upload_air: np.ndarray


@dataclass(frozen=True)
class Energy:
    """Joules per device: compute, radio transmit, radio receive, idle waiting; `total` is their sum."""

    compute: np.ndarray
    tx: np.ndarray
    rx: np.ndarray
    idle: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return cast(np.ndarray, self.compute + self.tx + self.rx + self.idle)


def seconds(t: Phases, round_s: Union[float, np.ndarray]) -> Seconds:
    """Each phase cut at the round's close (`round_s` after its start; one per device where they
    stop at different times); unsent devices spend nothing. A round of unbounded length
    (asynchronous: no close) is `inf`: every phase runs in full, no waiting."""
    r = np.asarray(round_s, dtype=np.float64)
    comp = t.t_compute * t.work
    d = np.minimum(t.t_download, r)
    c = np.clip(r - t.t_download, 0.0, comp)
    u = np.clip(r - t.t_download - comp, 0.0, t.t_upload)
    idle = np.where(np.isfinite(r), np.maximum(r - d - c - u, 0.0), 0.0)
    d_air, u_air = _on_air(d, t.t_download, t.wait_download), _on_air(u, t.t_upload, t.wait_upload)
    zero = ~t.sent
    return Seconds(*(np.where(zero, 0.0, x) for x in (d, c, u, idle, d_air, u_air)))


def _on_air(spent: np.ndarray, full: np.ndarray, wait: Optional[np.ndarray]) -> np.ndarray:
    if wait is None:
        return spent
    share = np.where(full > 0, 1.0 - wait / np.where(full > 0, full, 1.0), 1.0)
    return spent * share


def phase_energy(s: Seconds, power: Mapping[str, np.ndarray]) -> Energy:
    """Joules from seconds per phase and the devices' power states (`Fleet.power_of`)."""
    tail = power["tail_j"]
    # a phase of no time costs nothing, even where the power is unknown (an excluded device)
    compute = np.where(s.compute > 0, s.compute * power["compute_w"], 0.0)
    off = power["radio_idle_w"]
    tx = np.where(s.upload > 0, s.upload_air * power["tx_w"] + (s.upload - s.upload_air) * off + tail, 0.0)
    rx = np.where(s.download > 0, s.download_air * power["rx_w"] + (s.download - s.download_air) * off + tail, 0.0)
    idle = np.where(s.idle > 0, s.idle * (power["idle_w"] + power["radio_idle_w"]), 0.0)
    return Energy(compute, tx, rx, idle)


def work_energy(t_download: np.ndarray, t_compute: np.ndarray, t_upload: np.ndarray, wait_download: np.ndarray,
                wait_upload: np.ndarray, power: Mapping[str, np.ndarray]) -> Energy:
    """Joules of the whole work (download, compute, upload; no waiting for a round's close),
    as an assigner or a battery check predicts it. Its `idle` is zero."""
    n = len(t_download)
    s = seconds(Phases(t_download, t_compute, t_upload, np.ones(n), np.ones(n, bool), wait_download, wait_upload),
                np.inf)
    return phase_energy(s, power)
