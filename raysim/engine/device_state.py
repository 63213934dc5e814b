"""State that lives with a device across rounds, whichever host trains it next.

A client algorithm or channel that keeps state per device (an error-feedback residual) returns
it in the device's report; the engine keeps it here and sends it with the device's next task.
States are numpy arrays (they cross Ray and checkpoints as they are); only devices that have
trained hold one. Past `budget_bytes` in memory, the least recently used states are spilled to
`.npz` files in a directory of their own and read back when their device trains again, so a
10^5-device fleet costs at most the budget in RAM.

    store = DeviceStates(budget_bytes=256 << 20)
    store.put(7, {"rate": 0.5, "keep": {...}, "residual": {...}})
    store.get(7)
"""

from __future__ import annotations

import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from raysim.client.trainer import Trainer

__all__ = ["DeviceStates", "state_nbytes", "states_for"]

State = dict[str, Any]


def state_nbytes(state: State) -> int:
    """Bytes of a state's arrays (nested dicts of numpy arrays and scalars)."""
    total = 0
    for v in state.values():
        if isinstance(v, dict):
            total += state_nbytes(v)
        elif isinstance(v, np.ndarray):
            total += v.nbytes
        else:
            total += 8
    return total


def _flatten(state: State, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> State:
    out: State = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v if v.ndim else v.item()
    return out


def states_for(trainer: "Trainer") -> Optional["DeviceStates"]:
    """A store when a run keeps state per device (an uplink with error feedback, a stateful
    client algorithm), else None."""
    return DeviceStates() if trainer.up.error_feedback or trainer.client.keeps_state else None


class DeviceStates:
    """Device id -> state, bounded in memory (see the module docstring)."""

    def __init__(self, budget_bytes: int = 1 << 30, spill_dir: Optional[Path] = None) -> None:
        self.budget = int(budget_bytes)
        self._ram: OrderedDict[int, State] = OrderedDict()
        self._bytes: dict[int, int] = {}
        self._spilled: set[int] = set()
        self._dir = Path(spill_dir) if spill_dir is not None else None
        self._own_dir = False
        self.ram_bytes = 0
        self.spills = 0

    def __len__(self) -> int:
        return len(self._ram) + len(self._spilled)

    def __contains__(self, device_id: int) -> bool:
        return device_id in self._ram or device_id in self._spilled

    def get(self, device_id: int) -> Optional[State]:
        """The device's state (None: it has none yet)."""
        d = int(device_id)
        if d in self._ram:
            self._ram.move_to_end(d)
            return self._ram[d]
        if d in self._spilled:
            with np.load(self._path(d)) as z:
                state = _unflatten({k: z[k] for k in z.files})
            self._spilled.discard(d)
            self._path(d).unlink()
            self._keep(d, state)
            return state
        return None

    def put(self, device_id: int, state: State) -> None:
        """Keep a device's new state (replacing its old one)."""
        d = int(device_id)
        self.drop(d)
        self._keep(d, state)

    def drop(self, device_id: int) -> None:
        d = int(device_id)
        if d in self._ram:
            self.ram_bytes -= self._bytes.pop(d)
            del self._ram[d]
        if d in self._spilled:
            self._spilled.discard(d)
            self._path(d).unlink()

    def _keep(self, d: int, state: State) -> None:
        self._ram[d] = state
        self._bytes[d] = state_nbytes(state)
        self.ram_bytes += self._bytes[d]
        while self.ram_bytes > self.budget and len(self._ram) > 1:
            old, st = self._ram.popitem(last=False)
            self.ram_bytes -= self._bytes.pop(old)
            np.savez(self._path(old), **_flatten(st))  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
            self._spilled.add(old)
            self.spills += 1

    def _path(self, d: int) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="raysim-state-"))
            self._own_dir = True
        self._dir.mkdir(parents=True, exist_ok=True)
        return self._dir / f"{d}.npz"

    def close(self) -> None:
        """Remove the spill directory this store made."""
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Every device's state as tensors (for a torch checkpoint loadable with weights_only)."""
        import torch  # noqa: PLC0415

        out = {}
        for d in sorted(set(self._ram) | self._spilled):
            st = self._ram[d] if d in self._ram else self._read(d)
            out[str(d)] = {k: torch.from_numpy(np.array(v)) for k, v in _flatten(st).items()}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for old in list(set(self._ram) | self._spilled):
            self.drop(old)
        for key, flat in sorted(state.items(), key=lambda kv: int(kv[0])):
            self._keep(int(key), _unflatten({k: v.numpy() for k, v in flat.items()}))

    def _read(self, d: int) -> State:
        with np.load(self._path(d)) as z:
            return _unflatten({k: z[k] for k in z.files})
