"""Power states and radio limits of a fleet's device classes: what computing, sending, receiving
and waiting draw, and how long a radio may stay on air.

Kept per class (indexed like `Fleet.class_idx`), not per device: a million devices add nothing
to a fleet's size. A class's compute and idle power come from the device catalogue; transmit,
receive and radio-idle power, the tail energy, the duty-cycle limit and the payload of one
message from its radio technology (`radios.yaml`). A
class the catalogue lacks (a trace's own label) has unknown power: NaN, and so NaN energy.

    >>> from raysim.fleet.catalogue import load_catalogue
    >>> p = PowerStates.of(["mcu", "trace"], load_catalogue())
    >>> p.radio
    ('ble', '')
    >>> bool(p.tx_w[0] > 0), bool(np.isnan(p.tx_w[1]))
    (True, True)
    >>> PowerStates.of(["mcu-lora"], load_catalogue()).duty_cycle.tolist()
    [0.01]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from raysim.fleet.catalogue import DeviceClass
from raysim.fleet.radios import Radio, load_radios

__all__ = ["PowerStates"]


@dataclass(frozen=True)
class PowerStates:
    """Per class: radio name, and power in W (compute, device idle, radio transmit, receive,
    idle), the radio's tail energy in J per transfer, its duty-cycle limit (largest share of
    time on air; 1 where none or unknown) and the payload of one message in bytes (inf: no
    practical limit); its battery capacity in J (inf: mains-powered) and standby power."""

    radio: tuple[str, ...]
    compute_w: np.ndarray
    idle_w: np.ndarray
    tx_w: np.ndarray
    rx_w: np.ndarray
    radio_idle_w: np.ndarray
    tail_j: np.ndarray
    duty_cycle: np.ndarray
    payload_bytes: np.ndarray
    battery_j: np.ndarray  # battery capacity, J (inf: mains-powered or unknown)
    standby_w: np.ndarray  # the device's own job when it does no FL work, W (0 where unknown)

    @classmethod
    def of(cls, class_names: list[str], catalogue: Mapping[str, DeviceClass],
           radios: Optional[Mapping[str, Radio]] = None) -> "PowerStates":
        """The power states of these classes (NaN for a class the catalogue lacks)."""
        radios = load_radios() if radios is None else radios
        nan = float("nan")
        rows = []
        for name in class_names:
            c = catalogue.get(name)
            r = radios[c.radio] if c is not None else None
            rows.append((c.compute_w if c else nan, c.idle_w if c else nan, r.tx_w if r else nan,
                         r.rx_w if r else nan, r.idle_w if r else nan, r.tail_j if r else nan,
                         r.duty_cycle if r else 1.0,
                         float(r.max_payload_bytes) if r and r.max_payload_bytes else float("inf"),
                         c.battery_wh * 3600.0 if c and c.battery_wh is not None else float("inf"),
                         c.standby_w if c else 0.0))
        cols = np.array(rows, dtype=np.float64).reshape(len(class_names), 10).T
        return cls(tuple(catalogue[n].radio if n in catalogue else "" for n in class_names), *cols)
