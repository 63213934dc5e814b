"""The training data goes into the object store once; the coordinator and every host read that copy."""

import numpy as np
import pytest
import ray
from helpers import coordinator, tiny_overrides

from raysim.runtime.shared import attach, share
from raysim.scenario.build import prepare
from raysim.scenario.schema import load_scenario

pytestmark = pytest.mark.usefixtures("ray_local")


def scenario(**over):
    return load_scenario("scenarios/quickstart.yaml", tiny_overrides(**over))


def test_the_light_setup_carries_no_training_data_and_attaches_back():
    sc = scenario(**{"data.synthetic.samples": 20000, "eval.max_samples": 500})
    setup = prepare(sc)
    ds = setup.dataset
    light, data = share(setup, sc.eval.max_samples)
    assert len(light.dataset.x_train) == 0 and len(light.shards) == 0
    assert len(light.dataset.y_test) == 500
    # What crosses to the coordinator is far smaller than the training set it no longer holds.
    assert len(ray.cloudpickle.dumps(light)) < ds.x_train.nbytes / 4
    full = attach(light, data)
    assert np.array_equal(full.dataset.x_train, ds.x_train) and np.array_equal(full.dataset.y_train, ds.y_train)
    assert not full.dataset.x_train.flags.writeable, "mapped from the object store, not copied"
    assert all(np.array_equal(a, b) for a, b in zip(full.shards, setup.shards))
    assert np.array_equal(full.dataset.x_test, ds.x_test[:500])


def test_coordinator_and_hosts_read_the_one_copy_the_driver_put():
    sc = scenario(**{"runtime.hosts": 2})
    coord = coordinator(sc, 2)
    try:
        refs = ray.get(coord.data_ref_ids.remote())
        assert len(refs["hosts"]) == 2
        assert all(h == refs["coordinator"] for h in refs["hosts"])
        assert len(set(refs["coordinator"])) == 5
        out = ray.get(coord.step.remote())
        assert out.round_row["trained"] > 0
    finally:
        ray.kill(coord)


def test_prefault_maps_the_stored_pages_so_later_reads_do_not_fault():
    # Defined here, so that Ray ships it by value (workers cannot import test modules).
    @ray.remote(num_cpus=0)
    class Reader:
        """A fresh process that maps a stored array, as a device host does."""

        def faults(self, refs: list, warm: bool) -> int:
            import resource  # noqa: PLC0415  (nothing of this module's globals: workers cannot import it)

            from raysim.runtime.shared import prefault  # noqa: PLC0415

            x = ray.get(refs[0])
            if warm:
                prefault(x)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            int(x.view(np.uint8)[::4096].sum(dtype=np.uint64))
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    ref = ray.put(np.ones(8_000_000, np.float32))  # 32 MB, ~7,800 pages
    cold, warm = (Reader.remote() for _ in range(2))
    try:
        n_cold = ray.get(cold.faults.remote([ref], False))
        n_warm = ray.get(warm.faults.remote([ref], True))
    finally:
        ray.kill(cold)
        ray.kill(warm)
    assert n_cold > 100, "premise: a fresh process faults as it first reads a stored array"
    assert n_warm < n_cold / 10


def test_one_host_per_node_and_a_replacement_outlives_its_node(monkeypatch):
    from raysim.runtime import pool as pool_mod  # noqa: PLC0415
    from raysim.runtime.shared import share_arrays  # noqa: PLC0415

    sc = scenario(**{"runtime.hosts_per": "node", "runtime.torch_threads": 2})
    setup = prepare(sc)
    ds = setup.dataset
    data = share_arrays(ds.x_train, ds.y_train, setup.shards, setup.fleet.device_id)
    from raysim.scenario.build import trainer  # noqa: PLC0415
    from raysim.scenario.resolve import components  # noqa: PLC0415

    pool = pool_mod.RayPool(setup.spec, trainer(sc, components(sc)), data, None, sc.runtime.hosts_per)
    here = ray.get_runtime_context().get_node_id()
    assert len(pool.hosts) == 1 and pool.node_ids() == [here], "one node: one host, pinned to it"
    assert pool._opts[0]["num_cpus"] == 2, "a per-node host reserves the CPUs of its torch threads"
    # Its node gone, a replacement is placed anywhere instead of waiting for the node forever.
    monkeypatch.setattr(pool_mod, "node_alive", lambda node_id: False)
    ray.kill(pool.hosts[0])
    pool.hosts[0] = pool._spawn(0)
    assert ray.get(pool.hosts[0].data_ref_ids.remote()) == data.ref_ids()
    ray.kill(pool.hosts[0])
