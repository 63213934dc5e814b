"""The training data in Ray's object store: put once by the driver, read zero-copy everywhere.

The driver loads and validates the dataset, puts the training arrays and the shard index into
the object store once, and drops its own copy. What crosses to the coordinator is then a
*light* `Setup` (model, costs, fleet, the evaluation slice of the test set) plus a
`SharedData` of object refs, which the coordinator hands on to every device host unchanged.
Ray moves an object to a node once, however many processes there read it, and a process maps
it read-only without copying: so the training set lies once in each node's object store.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import ray

from raysim.data import Shards
from raysim.engine.setup import Setup

PAGE = 4096


@dataclass(frozen=True)
class SharedData:
    """Object refs to the training arrays every device host reads.

    Held inside a dataclass, the refs stay refs when passed to an actor (Ray resolves only
    top-level ref arguments), so a restarted host fetches the same stored copy again.
    """

    x: ray.ObjectRef        # float32 (N, C, H, W) training images
    y: ray.ObjectRef        # int64 (N,) labels
    flat: ray.ObjectRef     # Shards.flat
    offsets: ray.ObjectRef  # Shards.offsets
    ids: ray.ObjectRef      # sorted fleet device ids (shards are stored by fleet position)

    def get(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The arrays, read-only and zero-copy from this node's object store."""
        x, y, flat, offsets, ids = ray.get([self.x, self.y, self.flat, self.offsets, self.ids])
        return x, y, flat, offsets, ids

    def ref_ids(self) -> list[str]:
        """The refs' ids (to check that every process reads the one stored copy)."""
        return [r.hex() for r in (self.x, self.y, self.flat, self.offsets, self.ids)]


def share_arrays(x: np.ndarray, y: np.ndarray, shards, ids: np.ndarray) -> SharedData:
    """Put training arrays, shards (any sequence of index arrays) and fleet ids, once each."""
    s = Shards.from_list(shards)
    return SharedData(*(ray.put(np.ascontiguousarray(a)) for a in (x, y, s.flat, s.offsets, np.asarray(ids))))


def share(setup: Setup, eval_samples: Optional[int] = None) -> tuple[Setup, SharedData]:
    """Put the setup's training data into the object store; return the setup without it.

    The light setup keeps the first `eval_samples` test samples (all if None): the only ones
    the coordinator evaluates on. Drop every other reference to `setup` afterwards, or the
    caller keeps a private copy of the dataset alive.
    """
    ds = setup.dataset
    data = share_arrays(ds.x_train, ds.y_train, setup.shards, setup.fleet.device_id)
    n_eval = len(ds.y_test) if eval_samples is None else min(eval_samples, len(ds.y_test))
    # Fresh empty arrays, not slices: a slice would pin the whole training array in this process.
    light_ds = replace(ds, x_train=np.empty((0, *ds.x_train.shape[1:]), np.float32),
                       y_train=np.empty(0, np.int64), writers=None,
                       x_test=np.array(ds.x_test[:n_eval]), y_test=np.array(ds.y_test[:n_eval]))
    empty = Shards(np.zeros(0, np.int64), np.zeros(1, np.int64))
    return replace(setup, dataset=light_ds, shards=empty), data


def attach(light: Setup, data: SharedData) -> Setup:
    """The full setup again, its training arrays mapped from the object store (no copy)."""
    x, y, flat, offsets, _ = data.get()
    return replace(light, dataset=replace(light.dataset, x_train=x, y_train=y), shards=Shards(flat, offsets))


def prefault(*arrays: np.ndarray) -> None:
    """Read one byte of every memory page of the arrays.

    A host maps the stored dataset lazily: the first read of each page faults. Left alone,
    a run pays that a page at a time inside its rounds; touching every page once at start-up
    moves the cost out of them (with the single stored copy: 0.91x round time at 10^5 devices,
    BENCHMARKS.md section 4).
    """
    for a in arrays:
        flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        if flat.size:
            int(flat[::PAGE].sum(dtype=np.uint64))
